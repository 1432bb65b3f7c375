//! An item's output as it is written: the files the loops write under
//! `<data-dir>/logs/<item>/` (the agent's and the tests'), read from where the last
//! read stopped. `damascus logs ID --follow` prints what it reads; `GET
//! /v1/items/{id}/logs` streams it as Server-Sent Events. One reader, so both show the
//! same output in the same order.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The most read from one file at a time, so a large log streams in parts.
const CHUNK_BYTES: u64 = 64 * 1024;

/// Where an item's log files live under the logs directory (`<data-dir>/logs`).
pub fn item_dir(logs_dir: &Path, item_id: i64) -> PathBuf {
    logs_dir.join(item_id.to_string())
}

/// New output of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The file's name (`build.log`, `test.log`, …).
    pub file: String,
    /// True for the first chunk read from this file.
    pub first: bool,
    /// Whole UTF-8 sequences only: a character split by the writer waits for its rest.
    pub bytes: Vec<u8>,
}

impl LogChunk {
    /// The chunk as text; bytes that are not UTF-8 become U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Follows the files of one item's log directory, oldest file first (by modification
/// time), each from where the last read stopped. The directory need not exist yet.
#[derive(Debug)]
pub struct LogTail {
    dir: PathBuf,
    offsets: BTreeMap<PathBuf, u64>,
}

impl LogTail {
    pub fn new(dir: PathBuf) -> LogTail {
        LogTail {
            dir,
            offsets: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What was written since the last call, at most `CHUNK_BYTES` per file; call
    /// again until it answers nothing to read everything there is.
    pub fn read_new(&mut self) -> std::io::Result<Vec<LogChunk>> {
        let mut chunks = Vec::new();
        for path in self.files() {
            let offset = self.offsets.entry(path.clone()).or_insert(0);
            let mut file = match std::fs::File::open(&path) {
                Ok(file) => file,
                // Removed between listing and opening (retention): nothing to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            if len < *offset {
                // Truncated and written anew: read it from the start.
                *offset = 0;
            }
            if len == *offset {
                continue;
            }
            file.seek(SeekFrom::Start(*offset))?;
            let mut bytes = Vec::new();
            file.by_ref()
                .take((len - *offset).min(CHUNK_BYTES))
                .read_to_end(&mut bytes)?;
            bytes.truncate(bytes.len() - incomplete_tail(&bytes));
            if bytes.is_empty() {
                continue;
            }
            let first = *offset == 0;
            *offset += bytes.len() as u64;
            chunks.push(LogChunk {
                file: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                first,
                bytes,
            });
        }
        Ok(chunks)
    }

    /// The directory's files, oldest first; none when it does not exist yet.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 sequence that is not complete
/// yet (0 to 3). Bytes that can never be UTF-8 are not held back.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: its lead is further back
        }
        let needs = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if needs > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_character_waits_for_its_rest() {
        let e_acute = "é".as_bytes();
        assert_eq!(incomplete_tail(b"plain"), 0);
        assert_eq!(incomplete_tail(&[b'a', e_acute[0]]), 1);
        assert_eq!(incomplete_tail("caf\u{e9}".as_bytes()), 0);
        let snow = "☃".as_bytes();
        assert_eq!(incomplete_tail(&[b'x', snow[0], snow[1]]), 2);
        // Garbage is not held back; a split character after garbage is.
        assert_eq!(incomplete_tail(&[0xff, b'a']), 0);
        assert_eq!(incomplete_tail(&[0xff, b'a', e_acute[0]]), 1);
        assert_eq!(incomplete_tail(&[]), 0);
    }

    #[test]
    fn reads_each_file_from_where_it_stopped() {
        let dir = std::env::temp_dir().join(format!("damascus-logtail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut tail = LogTail::new(dir.clone());
        assert_eq!(tail.read_new().unwrap(), vec![], "no directory yet");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("build.log"), "one\n").unwrap();
        let chunks = tail.read_new().unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            (chunks[0].file.as_str(), chunks[0].first),
            ("build.log", true)
        );
        assert_eq!(chunks[0].text(), "one\n");
        assert_eq!(tail.read_new().unwrap(), vec![]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("build.log"))
            .unwrap();
        std::io::Write::write_all(&mut file, "two \u{e9}".as_bytes()).unwrap();
        let chunks = tail.read_new().unwrap();
        assert_eq!(
            (chunks[0].text().as_str(), chunks[0].first),
            ("two \u{e9}", false)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
