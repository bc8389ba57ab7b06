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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [b'-'; 36];
    let mut nibble = 32;
    for (i, slot) in id.iter_mut().enumerate() {
        if !matches!(i, 8 | 13 | 18 | 23) {
            nibble -= 1;
            *slot = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
        }
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
}
