//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, symmetric
//! scheme), so a receiver can check a delivery with any of that specification's
//! libraries or with a few lines of its own.
//!
//! - A secret is `whsec_` followed by the standard base64 (with `=` padding) of the key;
//!   the key itself, not the text, is what HMAC uses. The specification asks for a key
//!   of 24 to 64 bytes.
//! - The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, and the
//!   `webhook-signature` header is `v1,` followed by the base64 of its HMAC-SHA256. The
//!   header may carry several space-separated signatures (one per key during a
//!   rotation, or of other schemes such as `v1a`); one matching `v1` entry is enough.
//! - A receiver refuses a timestamp too far from its clock, so a captured delivery
//!   cannot be replayed later.
//!
//! Keys and secrets never appear in an error message: errors say what is wrong with a
//! secret, not what it is.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

const SECRET_PREFIX: &str = "whsec_";
/// The specification's minimum, which is also what a new secret gets: 192 bits.
const NEW_KEY_BYTES: usize = 24;
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
const SIGNATURE_VERSION: &str = "v1";

/// What is wrong with a webhook secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the webhook secret does not start with whsec_; a webhook secret is whsec_ followed by base64; leave the secret out and one is made for you (`damascus webhook add` without --secret)"
    )]
    MissingPrefix,
    #[error(
        "the part of the webhook secret after whsec_ is not base64 (standard alphabet, '=' padding, no spaces); leave the secret out and one is made for you (`damascus webhook add` without --secret)"
    )]
    NotBase64,
    #[error(
        "the webhook secret's key is {0} bytes; it must be 24 to 64 bytes (32 to 88 base64 characters after whsec_); leave the secret out and one is made for you (`damascus webhook add` without --secret)"
    )]
    KeyLength(usize),
}

/// Why a delivery's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "the {0} header is missing or empty; a Standard Webhooks delivery carries webhook-id, webhook-timestamp and webhook-signature"
    )]
    MissingHeader(&'static str),
    #[error("webhook-timestamp {0:?} is not a whole number of unix seconds")]
    BadTimestamp(String),
    #[error(
        "webhook-timestamp is {age_secs}s old, more than the {tolerance_secs}s allowed: a replayed or long-delayed delivery (if it is fresh, check the sender's and receiver's clocks)"
    )]
    TooOld { age_secs: i64, tolerance_secs: i64 },
    #[error(
        "webhook-timestamp is {ahead_secs}s in the future, more than the {tolerance_secs}s allowed; check the sender's and receiver's clocks"
    )]
    TooNew {
        ahead_secs: i64,
        tolerance_secs: i64,
    },
    #[error(
        "webhook-signature holds no v1 signature; expected space-separated entries such as v1,<base64 of HMAC-SHA256>"
    )]
    NoV1Signature,
    #[error(
        "no v1 signature in webhook-signature matches: the body, id or timestamp changed after signing (e.g. the JSON was re-serialized), or the secret is not this webhook's"
    )]
    NoMatch,
}

/// The three headers of a signed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`, unix seconds.
    pub timestamp: i64,
    /// `webhook-signature`: `v1,` and the base64 of the HMAC-SHA256.
    pub signature: String,
}

/// A new random secret: `whsec_` and the base64 of 24 bytes from the operating system.
pub fn new_secret() -> String {
    let mut key = [0u8; NEW_KEY_BYTES];
    // The OS generator, not a userspace one: this is a long-lived key.
    OsRng.fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The HMAC key of a `whsec_` secret.
///
/// Only canonical padded base64 is accepted, so a stored secret is exactly what every
/// receiver's library can read too.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SecretError::MissingPrefix)?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| SecretError::NotBase64)?;
    if !KEY_BYTES.contains(&key.len()) {
        return Err(SecretError::KeyLength(key.len()));
    }
    Ok(key)
}

/// Signs one delivery of `body` as message `msg_id` sent at `timestamp` (unix seconds).
///
/// `msg_id` must not contain `.`, the separator of the signed content (the
/// specification asks this of ids so no two (id, timestamp) pairs sign alike).
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> SignedHeaders {
    debug_assert!(!msg_id.contains('.'), "a webhook-id must not contain '.'");
    let mac = hmac_sha256(key, msg_id, timestamp, body);
    SignedHeaders {
        id: msg_id.to_owned(),
        timestamp,
        signature: format!("{SIGNATURE_VERSION},{}", STANDARD.encode(mac)),
    }
}

/// Checks a delivery's headers against `body` as a receiver does: the timestamp must
/// be within `tolerance_secs` of `now` (unix seconds) either way, and one of the `v1`
/// signatures in `signature_header` must match, compared in constant time.
pub fn verify(
    key: &[u8],
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-id"));
    }
    if timestamp.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-timestamp"));
    }
    if signature_header.trim().is_empty() {
        return Err(VerifyError::MissingHeader("webhook-signature"));
    }
    let sent_at: i64 = timestamp
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(timestamp.to_owned()))?;
    let age_secs = now.saturating_sub(sent_at);
    if age_secs > tolerance_secs {
        return Err(VerifyError::TooOld {
            age_secs,
            tolerance_secs,
        });
    }
    if -age_secs > tolerance_secs {
        return Err(VerifyError::TooNew {
            ahead_secs: -age_secs,
            tolerance_secs,
        });
    }
    // The expected MAC is over the timestamp as a number, as the official libraries do.
    let expected = hmac_sha256(key, msg_id, sent_at, body);
    let mut saw_v1 = false;
    for entry in signature_header.split_whitespace() {
        let Some((version, encoded)) = entry.split_once(',') else {
            continue;
        };
        if version != SIGNATURE_VERSION {
            continue;
        }
        saw_v1 = true;
        let Ok(candidate) = STANDARD.decode(encoded) else {
            continue;
        };
        // Only the length (public: always 32 for a real signature) is compared in
        // variable time; the bytes are compared in constant time so a forger learns
        // nothing from how fast a guess is refused.
        if bool::from(candidate.as_slice().ct_eq(&expected)) {
            return Ok(());
        }
    }
    Err(if saw_v1 {
        VerifyError::NoMatch
    } else {
        VerifyError::NoV1Signature
    })
}

fn hmac_sha256(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: i64 = 300;

    // The test vector of the Standard Webhooks reference libraries:
    // github.com/standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py
    // (`test_sign_function`; the same values are in the other libraries' tests).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_key() -> Vec<u8> {
        parse_secret(VECTOR_SECRET).unwrap()
    }

    /// Verifies `header` for the test vector's id and body, `now` seconds after its
    /// timestamp.
    fn check(key: &[u8], body: &[u8], header: &str, now: i64) -> Result<(), VerifyError> {
        verify(
            key,
            VECTOR_ID,
            &VECTOR_TIMESTAMP.to_string(),
            header,
            body,
            VECTOR_TIMESTAMP + now,
            TOLERANCE,
        )
    }

    #[test]
    fn sign_reproduces_the_standard_webhooks_test_vector() {
        let signed = sign(&vector_key(), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        assert_eq!(
            signed,
            SignedHeaders {
                id: VECTOR_ID.to_owned(),
                timestamp: VECTOR_TIMESTAMP,
                signature: VECTOR_SIGNATURE.to_owned(),
            }
        );
    }

    #[test]
    fn verify_accepts_the_standard_webhooks_test_vector() {
        assert_eq!(
            check(&vector_key(), VECTOR_BODY, VECTOR_SIGNATURE, 0),
            Ok(())
        );
    }

    #[test]
    fn a_new_secret_round_trips() {
        let secret = new_secret();
        assert!(secret.starts_with("whsec_"), "{secret}");
        let key = parse_secret(&secret).unwrap();
        assert_eq!(key.len(), 24);
        assert_ne!(parse_secret(&new_secret()).unwrap(), key);

        let signed = sign(&key, "msg_42", 1_700_000_000, b"{}");
        let verified = verify(
            &key,
            &signed.id,
            &signed.timestamp.to_string(),
            &signed.signature,
            b"{}",
            1_700_000_010,
            TOLERANCE,
        );
        assert_eq!(verified, Ok(()));
    }

    #[test]
    fn parse_secret_refuses_what_is_not_a_whsec_secret() {
        let check = |secret: &str, expected: Result<usize, SecretError>| {
            assert_eq!(
                parse_secret(secret).map(|k| k.len()),
                expected,
                "{secret:?}"
            );
        };
        check(VECTOR_SECRET, Ok(24));
        check(&format!("whsec_{}", STANDARD.encode([7u8; 64])), Ok(64));
        check(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Err(SecretError::MissingPrefix),
        );
        check("", Err(SecretError::MissingPrefix));
        check(
            "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Err(SecretError::MissingPrefix),
        );
        check("whsec_not base64!", Err(SecretError::NotBase64));
        check(&format!("{VECTOR_SECRET}\n"), Err(SecretError::NotBase64));
        // 25 bytes: its base64 needs "==", so the unpadded form is refused.
        let padded = STANDARD.encode([7u8; 25]);
        check(&format!("whsec_{padded}"), Ok(25));
        check(
            &format!("whsec_{}", padded.trim_end_matches('=')),
            Err(SecretError::NotBase64),
        );
        check("whsec_", Err(SecretError::KeyLength(0)));
        check("whsec_c2hvcnQ=", Err(SecretError::KeyLength(5)));
        check(
            &format!("whsec_{}", STANDARD.encode([7u8; 65])),
            Err(SecretError::KeyLength(65)),
        );
    }

    #[test]
    fn secret_errors_say_how_to_fix_and_do_not_echo_the_secret() {
        let error = parse_secret("whsec_hunter2!").unwrap_err().to_string();
        assert!(error.contains("damascus webhook add"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn a_tampered_body_is_rejected() {
        assert_eq!(
            check(
                &vector_key(),
                br#"{"test": 2432232315}"#,
                VECTOR_SIGNATURE,
                0
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_changed_id_or_timestamp_is_rejected() {
        let key = vector_key();
        let ts = VECTOR_TIMESTAMP.to_string();
        let other_id = verify(
            &key,
            "msg_other",
            &ts,
            VECTOR_SIGNATURE,
            VECTOR_BODY,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(other_id, Err(VerifyError::NoMatch));
        let later = (VECTOR_TIMESTAMP + 1).to_string();
        let other_ts = verify(
            &key,
            VECTOR_ID,
            &later,
            VECTOR_SIGNATURE,
            VECTOR_BODY,
            VECTOR_TIMESTAMP,
            TOLERANCE,
        );
        assert_eq!(other_ts, Err(VerifyError::NoMatch));
    }

    #[test]
    fn the_wrong_key_is_rejected() {
        let other = parse_secret(&new_secret()).unwrap();
        assert_eq!(
            check(&other, VECTOR_BODY, VECTOR_SIGNATURE, 0),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_rejected() {
        let key = vector_key();
        assert_eq!(
            check(&key, VECTOR_BODY, VECTOR_SIGNATURE, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            check(&key, VECTOR_BODY, VECTOR_SIGNATURE, -TOLERANCE),
            Ok(())
        );
        assert_eq!(
            check(&key, VECTOR_BODY, VECTOR_SIGNATURE, TOLERANCE + 1),
            Err(VerifyError::TooOld {
                age_secs: TOLERANCE + 1,
                tolerance_secs: TOLERANCE
            })
        );
        assert_eq!(
            check(&key, VECTOR_BODY, VECTOR_SIGNATURE, -TOLERANCE - 1),
            Err(VerifyError::TooNew {
                ahead_secs: TOLERANCE + 1,
                tolerance_secs: TOLERANCE
            })
        );
        // A day-old replay of a genuine delivery.
        assert!(matches!(
            check(&key, VECTOR_BODY, VECTOR_SIGNATURE, 86_400),
            Err(VerifyError::TooOld { .. })
        ));
    }

    #[test]
    fn one_matching_signature_among_several_is_enough() {
        let key = vector_key();
        // As in the reference libraries' multi-signature test: other keys' v1
        // signatures, another scheme's entry, and the genuine one among them.
        let other = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        let v2 = "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        let header = format!("{other} {v2} {VECTOR_SIGNATURE} {other}");
        assert_eq!(check(&key, VECTOR_BODY, &header, 0), Ok(()));
        // Malformed entries are skipped, not fatal.
        let header = format!("garbage v1,not-base64! {VECTOR_SIGNATURE}");
        assert_eq!(check(&key, VECTOR_BODY, &header, 0), Ok(()));
        let header = format!("{other} {v2}");
        assert_eq!(
            check(&key, VECTOR_BODY, &header, 0),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let key = vector_key();
        assert_eq!(
            check(
                &key,
                VECTOR_BODY,
                "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw v2,abc",
                0
            ),
            Err(VerifyError::NoV1Signature)
        );
        assert_eq!(
            check(&key, VECTOR_BODY, " ", 0),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        let verify_ts = |ts: &str| {
            verify(
                &key,
                VECTOR_ID,
                ts,
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                TOLERANCE,
            )
        };
        assert_eq!(
            verify_ts(""),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            verify_ts("1614265330.5"),
            Err(VerifyError::BadTimestamp("1614265330.5".to_owned()))
        );
        assert_eq!(
            verify(
                &key,
                "",
                "1614265330",
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                TOLERANCE
            ),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
    }

    /// The independent verifier in tests/webhooks/verify.py, written from the
    /// specification, accepts what `sign` produces and refuses a tampered body.
    #[test]
    fn the_python_verifier_agrees() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/webhooks/verify.py");
        let secret = new_secret();
        let key = parse_secret(&secret).unwrap();
        let body = br#"{"kind":"item.blocked","item":7}"#;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signed = sign(&key, "msg_7", now, body);

        let run = |body: &[u8]| {
            let mut child = match Command::new("python3")
                .arg(&script)
                .arg(&secret)
                .env("WEBHOOK_ID", &signed.id)
                .env("WEBHOOK_TIMESTAMP", signed.timestamp.to_string())
                .env("WEBHOOK_SIGNATURE", &signed.signature)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("cannot run python3: {e}"),
            };
            child.stdin.take().unwrap().write_all(body).unwrap();
            Some(child.wait_with_output().unwrap())
        };

        let Some(genuine) = run(body) else {
            eprintln!("skipped: python3 is not installed");
            return;
        };
        let out = String::from_utf8_lossy(&genuine.stdout);
        let err = String::from_utf8_lossy(&genuine.stderr);
        assert_eq!(
            genuine.status.code(),
            Some(0),
            "stdout: {out}\nstderr: {err}"
        );
        assert_eq!(out.trim(), "valid");

        let tampered = run(br#"{"kind":"item.blocked","item":8}"#).unwrap();
        let err = String::from_utf8_lossy(&tampered.stderr);
        assert_eq!(tampered.status.code(), Some(1), "stderr: {err}");
        assert!(err.contains("no v1 signature matches"), "stderr: {err}");
    }
}
