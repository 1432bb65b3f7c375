//! HTTP fixtures tests of several crates share.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

/// The `Authorization` headers a fixture server received, in order.
pub type SeenAuthorizations = Arc<Mutex<Vec<String>>>;

/// An HTTP server on 127.0.0.1 that demands Basic authentication of every request
/// (401 with a challenge, whatever was sent) and records the `Authorization` headers it
/// got; returns its port. Plays a git remote over http that refuses everyone.
pub fn basic_auth_remote() -> (u16, SeenAuthorizations) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: SeenAuthorizations = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(value) = line.strip_prefix("Authorization: ") {
                    record.lock().unwrap().push(value.trim().to_owned());
                }
                line.clear();
            }
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, seen)
}
