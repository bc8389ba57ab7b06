//! Path normalization, done once per request before matching, so the path that is matched is the
//! path that is authorized and forwarded (no `/api/../admin` slipping past a prefix rule).
//!
//! Percent-encoded unreserved characters are decoded, other escapes are kept (hex upper-cased),
//! `.`/`..` segments are resolved and `//` merged. Encoded separators (`%2F`, `%5C`), backslashes,
//! NUL, malformed escapes and paths that climb above the root are rejected. Hand-written: no crate
//! does RFC 3986 normalization with these security rejections.

use std::borrow::Cow;

use crate::error::GatewayError;

/// The normalized form of `path`, borrowed when it was already normal (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest("the request path must start with /"));
    }
    if is_plainly_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    let mut raw_segments = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(raw) = raw_segments.next() {
        let is_last = raw_segments.peek().is_none();
        let segment = decode_segment(raw)?;
        match segment.as_str() {
            "" | "." => trailing_slash = is_last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(GatewayError::BadRequest("the request path climbs above the root"));
                }
                trailing_slash = is_last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True when no rule below could change the path: no `%`, `\`, `//`, or dot segments.
fn is_plainly_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.iter().any(|&b| b == b'%' || b == b'\\' || b == 0) {
        return false;
    }
    !path[1..]
        .split('/')
        .enumerate()
        .any(|(i, s)| s == "." || s == ".." || (s.is_empty() && i + 1 < path[1..].split('/').count()))
}

fn decode_segment(raw: &str) -> Result<String, GatewayError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte =
                    hex.and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or(GatewayError::BadRequest(
                            "the request path has a malformed percent-escape",
                        ))?;
                match byte {
                    b'/' | b'\\' => {
                        return Err(GatewayError::BadRequest(
                            "the request path has an encoded separator (%2F or %5C)",
                        ));
                    }
                    0 => return Err(GatewayError::BadRequest("the request path has an encoded NUL")),
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(b));
                    }
                    b => {
                        out.push('%');
                        out.push(
                            char::from_digit(u32::from(b >> 4), 16)
                                .unwrap_or('0')
                                .to_ascii_uppercase(),
                        );
                        out.push(
                            char::from_digit(u32::from(b & 0xf), 16)
                                .unwrap_or('0')
                                .to_ascii_uppercase(),
                        );
                    }
                }
                i += 3;
            }
            b'\\' => return Err(GatewayError::BadRequest("the request path has a backslash")),
            0 => return Err(GatewayError::BadRequest("the request path has a NUL byte")),
            _ => {
                // Copy a run of ordinary bytes at once; `raw` is valid UTF-8 and `%`/`\` are ASCII.
                let end = bytes[i..]
                    .iter()
                    .position(|&b| matches!(b, b'%' | b'\\' | 0))
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&raw[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    fn rejected(p: &str) -> bool {
        matches!(normalize(p), Err(GatewayError::BadRequest(_)))
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/users",
            "/api/users/",
            "/a/b.c/..d/e.",
            "/x?not-a-query",
        ] {
            assert!(matches!(normalize(p).unwrap(), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_double_slashes_resolve() {
        assert_eq!(ok("/api/../admin"), "/admin");
        assert_eq!(ok("/api/./users"), "/api/users");
        assert_eq!(ok("//api///users"), "/api/users");
        assert_eq!(ok("/api/users/."), "/api/users/");
        assert_eq!(ok("/api/.."), "/");
        assert_eq!(ok("/api/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/api/%2E/users"), "/api/users");
        assert_eq!(ok("/api//"), "/api/");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_stay_encoded() {
        assert_eq!(ok("/%61pi/%7euser"), "/api/~user");
        assert_eq!(ok("/files/a%20b%3f"), "/files/a%20b%3F");
        assert_eq!(ok("/caf%C3%A9"), "/caf%C3%A9");
    }

    #[test]
    fn dangerous_paths_are_rejected() {
        assert!(rejected("/../etc/passwd"));
        assert!(rejected("/api/../../x"));
        assert!(rejected("/%2e%2e/x"));
        assert!(rejected("/api%2Fadmin"));
        assert!(rejected("/api%2fadmin"));
        assert!(rejected("/api%5Cadmin"));
        assert!(rejected("/api\\admin"));
        assert!(rejected("/bad%zzescape"));
        assert!(rejected("/truncated%2"));
        assert!(rejected("/nul%00"));
        assert!(rejected("relative"));
    }
}
