//! `x-request-id`: kept when the client sent a sane one (so ids correlate across systems), else
//! generated. It goes upstream, into error bodies and back to the client.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::headers::shared_value;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's id when it is 1–128 characters of `[A-Za-z0-9._:=+/-]`, else a fresh one.
pub fn from_request(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'=' | b'+' | b'/' | b'-')
        })
}

/// A random UUIDv4-formatted id. Ids need to be unique, not unguessable, so a fast PRNG is enough.
pub fn generate() -> HeaderValue {
    let bits = fastrand::u128(..);
    // Version 4, variant 10xx, as in RFC 9562.
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut hex = [0; 32];
    // The buffer is exactly twice the bytes' length, so encoding cannot fail.
    let _ = hex::encode_to_slice(bits.to_be_bytes(), &mut hex);
    let mut id = [b'-'; 36];
    for (from, to) in [(0..8, 0), (8..12, 9), (12..16, 14), (16..20, 19), (20..32, 24)] {
        id[to..to + from.len()].copy_from_slice(&hex[from]);
    }
    shared_value(&id).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(from_request(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let generated = from_request(&h);
        assert_eq!(generated.len(), 36);
        assert_eq!(&generated.to_str().unwrap()[14..15], "4");
        h.insert(&X_REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_ne!(from_request(&h).len(), 129);
        assert_ne!(from_request(&HeaderMap::new()), from_request(&HeaderMap::new()));
    }

    #[test]
    fn generated_ids_are_uuid_v4_text() {
        for _ in 0..100 {
            let id = generate();
            let id = id.as_bytes();
            for (i, &b) in id.iter().enumerate() {
                match i {
                    8 | 13 | 18 | 23 => assert_eq!(b, b'-'),
                    14 => assert_eq!(b, b'4'),
                    19 => assert!(b"89ab".contains(&b)),
                    _ => assert!(b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                }
            }
        }
    }
}
