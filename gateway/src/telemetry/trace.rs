//! W3C Trace Context: every backend call carries a `traceparent`, the client's when it sent a
//! valid one, otherwise one started for the request, so backends' logs and traces can be joined
//! with the gateway's.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The `traceparent` calls for this request carry: the client's if valid, else a new trace.
pub fn traceparent(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&TRACEPARENT)
        .filter(|v| is_traceparent(v.as_bytes()))
        .cloned()
        .unwrap_or_else(new_traceparent)
}

/// Sets [`traceparent`] on a request going upstream (a client's invalid one is replaced).
pub fn ensure_traceparent(headers: &mut HeaderMap) -> HeaderValue {
    let value = traceparent(headers);
    headers.insert(TRACEPARENT, value.clone());
    value
}

/// `version-traceid-parentid-flags`: lower-case hex, ids not all zero, version not `ff`.
pub fn is_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[..2])
        && &v[..2] != b"ff"
        && hex(&v[3..35])
        && nonzero(&v[3..35])
        && hex(&v[36..52])
        && nonzero(&v[36..52])
        && hex(&v[53..])
}

fn new_traceparent() -> HeaderValue {
    let text = format!("00-{:032x}-{:016x}-01", fastrand::u128(1..), fastrand::u64(1..));
    HeaderValue::try_from(text).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        assert!(is_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(is_traceparent(new_traceparent().as_bytes()));
    }

    #[test]
    fn a_valid_traceparent_is_kept_and_an_invalid_one_replaced() {
        let mut h = HeaderMap::new();
        let given = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        h.insert(TRACEPARENT, given.clone());
        assert_eq!(ensure_traceparent(&mut h), given);
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        let new = ensure_traceparent(&mut h);
        assert!(is_traceparent(new.as_bytes()));
        assert_eq!(h[TRACEPARENT], new);
    }
}
