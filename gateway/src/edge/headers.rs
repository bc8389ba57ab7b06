//! Header hygiene at the edge: hop-by-hop headers (RFC 9110 §7.6.1) and every header named in
//! `Connection` are removed in both directions, and the gateway's own headers are set.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue};
use smallvec::SmallVec;

/// A header value the gateway writes for every request (a request id, a trace parent, a client
/// address, a number), made in one allocation that its clones share.
/// `HeaderValue::from_bytes` copies into a vector that its first clone turns into a shared
/// buffer, a second allocation; the request id and the trace parent are both cloned.
pub fn shared_value(text: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
    /// Up to 64 bytes kept inline: the longest value written per request is a trace parent (55).
    struct Inline {
        text: [u8; 64],
        len: u8,
    }
    impl AsRef<[u8]> for Inline {
        fn as_ref(&self) -> &[u8] {
            &self.text[..usize::from(self.len)]
        }
    }
    let Some(len) = u8::try_from(text.len()).ok().filter(|&len| len <= 64) else {
        return HeaderValue::from_bytes(text);
    };
    let mut inline = Inline { text: [0; 64], len };
    inline.text[..text.len()].copy_from_slice(text);
    HeaderValue::from_maybe_shared(Bytes::from_owner(inline))
}

/// A number as a header value (`HeaderValue::from(u64)` takes two allocations).
pub fn number_value(n: u64) -> HeaderValue {
    let mut text = itoa::Buffer::new();
    shared_value(text.format(n).as_bytes()).unwrap_or_else(|_| HeaderValue::from(n))
}

/// Removes every header named in `names` that `headers` has. Most requests carry none of them:
/// one pass over the request's names finds that (comparing only names of a length in `names`),
/// where a removal for each would hash every name.
pub fn remove_present(headers: &mut HeaderMap, names: &[HeaderName]) {
    let bit = |name: &HeaderName| 1u64 << name.as_str().len().min(63);
    let lengths = names.iter().fold(0, |mask, name| mask | bit(name));
    if headers.keys().any(|k| lengths & bit(k) != 0 && names.contains(k)) {
        for name in names {
            headers.remove(name);
        }
    }
}

/// Removes hop-by-hop headers, including the ones a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One scan of the names finds the hop-by-hop headers that are there (most requests carry
    // none; most responses only `Connection: keep-alive`): cheaper than a removal of each
    // hop-by-hop name, and than a scan per removal.
    let found: SmallVec<[HeaderName; 2]> = headers.keys().filter(|k| is_hop_by_hop(k)).cloned().collect();
    if found.is_empty() {
        return;
    }
    // Names listed in Connection are hop-by-hop too: parsed once (however long the list, one
    // removal each), before Connection itself goes. The usual `keep-alive` and `close` need no
    // removal of their own (the first is hop-by-hop anyway, the second names no header), so the
    // usual message collects nothing and allocates nothing.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named.into_iter().chain(found) {
        headers.remove(name);
    }
}

/// By name, as a match on the lower-case string: comparing against a list of `HeaderName`s would
/// build (and drop) that list on every call, for every header of every message.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_values_keep_their_text_and_refuse_what_a_header_cannot_carry() {
        for text in ["", "a", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] {
            let value = shared_value(text.as_bytes()).unwrap();
            assert_eq!(value.clone().as_bytes(), text.as_bytes());
        }
        let long = "x".repeat(65);
        assert_eq!(shared_value(long.as_bytes()).unwrap().as_bytes(), long.as_bytes());
        assert!(shared_value(b"a\nb").is_err());
        assert!(shared_value(&[b'\n'; 70]).is_err());
        assert_eq!(number_value(0).as_bytes(), b"0");
        assert_eq!(number_value(u64::MAX).as_bytes(), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn present_names_are_removed_with_all_their_values() {
        let names = [HeaderName::from_static("x-user-id"), header::AUTHORIZATION];
        let mut h = HeaderMap::new();
        h.insert("x-keep", "1".parse().unwrap());
        remove_present(&mut h, &names);
        assert_eq!(h.len(), 1);
        h.append("x-user-id", "a".parse().unwrap());
        h.append("x-user-id", "b".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        remove_present(&mut h, &names);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret , close".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        h.insert("proxy-status", "x".parse().unwrap());
        h.append("connection", "x-other".parse().unwrap());
        h.insert("x-other", "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");

        // The usual response: only Connection goes.
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("connection", "keep-alive".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}
