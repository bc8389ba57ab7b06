//! What our two HTTP/1.1 codecs share: the client one (`upstream::h1`, to backends) and the
//! server one (`server::h1`, from clients) decode chunked bodies, write header lines, chunk
//! sizes and the numbers of a message's framing, and parse heads into (recycled) header maps the
//! same way.

use std::cell::RefCell;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use smallvec::SmallVec;

/// The most headers a head (or a trailer section) may carry.
pub const MAX_HEADERS: usize = 100;
/// The most a chunk-size line (with its extensions) may take.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most the trailer section after the last chunk may take.
const MAX_TRAILERS: usize = 16 * 1024;

thread_local! {
    /// Emptied header maps, kept for the next head parsed on this thread: a map's two
    /// allocations (its index and its entries) are otherwise made and freed for every request
    /// and every response.
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}
/// Spare maps kept per thread at most.
const SPARE_MAPS_MAX: usize = 64;
/// A map that held more headers than this is not kept.
const SPARE_MAP_CAPACITY: usize = 64;

/// A map for a new head: a spare one (empty, with room) if this thread has one.
pub fn header_map() -> HeaderMap {
    SPARE_MAPS
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `map`, emptied, for another head (see [`header_map`]).
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_CAPACITY {
        return;
    }
    map.clear();
    // `try_with`: a map dropped while the thread ends has nowhere to go, and that is fine.
    let _ = SPARE_MAPS.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_MAPS_MAX {
            spare.push(map);
        }
    });
}

/// A request's header map that goes back to [`recycle`] when it is dropped.
#[derive(Debug, Default)]
pub struct Recycled(pub HeaderMap);

impl std::ops::Deref for Recycled {
    type Target = HeaderMap;
    fn deref(&self) -> &HeaderMap {
        &self.0
    }
}

impl std::ops::DerefMut for Recycled {
    fn deref_mut(&mut self) -> &mut HeaderMap {
        &mut self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
    }
}

/// Where each header's name and value sit in a parsed head: offsets from the head's start, so
/// the head can be frozen and its values sliced out of it rather than copied.
pub struct HeaderSpans(SmallVec<[(u32, u32, u32, u32); 24]>);

impl HeaderSpans {
    /// The spans of `headers`, parsed by httparse out of `buf`, whose head is at most 4 GiB.
    pub fn new(buf: &[u8], headers: &[httparse::Header<'_>]) -> Self {
        let start = buf.as_ptr() as usize;
        let offset = |part: &[u8]| (part.as_ptr() as usize - start) as u32;
        // Pushed into the value returned, not collected: `collect` built the 400-byte vector
        // aside and copied it out.
        let mut spans = Self(SmallVec::new());
        spans.0.reserve(headers.len());
        for h in headers {
            let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
            spans.0.push((
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            ));
        }
        spans
    }

    /// Appends the headers to `map`, their values slices of `head` (the frozen head the spans
    /// were taken from); `note` sees each name. The map gets room for `more` headers besides,
    /// the ones the gateway will add, so adding them never grows it.
    pub fn fill(
        &self,
        head: &Bytes,
        map: &mut HeaderMap,
        more: usize,
        mut note: impl FnMut(&HeaderName),
    ) -> Result<(), &'static str> {
        map.reserve(self.0.len() + more);
        for &(n0, n1, v0, v1) in &self.0 {
            let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
                .map_err(|_| "a header name is not valid")?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
                .map_err(|_| "a header value is not valid")?;
            note(&name);
            map.append(name, value);
        }
        Ok(())
    }
}

/// The version httparse read: `1` is HTTP/1.1, `0` HTTP/1.0.
pub fn version(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// Whether a header's comma-separated elements (RFC 9110 §5.6.1), over all its lines, include
/// `token` (case-insensitively): `Connection: close`, `TE: trailers`.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &[u8]) -> bool {
    headers.get_all(name).iter().any(|value| {
        let value = value.as_bytes();
        // Most values are one token (`keep-alive`, `close`): compared whole, without a split.
        if !value.contains(&b',') {
            return value.trim_ascii().eq_ignore_ascii_case(token);
        }
        value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// A Content-Length value: plain decimal digits, at most 19 of them (so it cannot overflow).
pub fn decimal(digits: &[u8]) -> Option<u64> {
    (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit))
        .then(|| digits.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The one length a message's `Content-Length` fields state, over all lines and list elements
/// (`5, 5` is 5): `Ok(None)` without any; an error when one is not a number or they disagree.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = decimal(part.trim_ascii()).ok_or("Content-Length is not a number")?;
            if length.is_some_and(|l| l != n) {
                return Err("Content-Length has differing values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: its bytes still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section and its empty line.
    Trailers,
}

pub enum Decoded {
    Data(Bytes),
    /// The body ended, with these trailers if it had any.
    Trailers(Option<HeaderMap>),
    NeedMore,
}

/// Decodes what `buf` holds of a chunked body, from `state` on. The error says what was
/// malformed; the body cannot be read past it.
pub fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    loop {
        match state {
            Chunked::Size => {
                let Some(end) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
                    if buf.len() >= MAX_CHUNK_LINE {
                        return Err("a chunk-size line is too long");
                    }
                    return Ok(Decoded::NeedMore);
                };
                let size = chunk_size(&buf[..end])?;
                buf.advance(end + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if *left == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            Chunked::DataEnd => match &buf[..] {
                [b'\r', b'\n', ..] => {
                    buf.advance(2);
                    *state = Chunked::Size;
                }
                [b'\n', ..] => {
                    buf.advance(1);
                    *state = Chunked::Size;
                }
                [] | [b'\r'] => return Ok(Decoded::NeedMore),
                _ => return Err("a chunk is longer than its size"),
            },
            Chunked::Trailers => {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, parsed) = match httparse::parse_headers(buf, &mut headers) {
                    Ok(httparse::Status::Complete(done)) => done,
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_TRAILERS => {
                        return Err("the trailers are too large");
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err("the trailers are malformed"),
                };
                let trailers = (!parsed.is_empty())
                    .then(|| {
                        parsed
                            .iter()
                            .map(|h| {
                                Ok((
                                    HeaderName::from_bytes(h.name.as_bytes())
                                        .map_err(|_| "a trailer name is not valid")?,
                                    HeaderValue::from_bytes(h.value)
                                        .map_err(|_| "a trailer value is not valid")?,
                                ))
                            })
                            .collect::<Result<HeaderMap, &'static str>>()
                    })
                    .transpose()?;
                buf.advance(len);
                return Ok(Decoded::Trailers(trailers));
            }
        }
    }
}

/// The size on a chunk-size line (`1a;name=value\r`): hex digits, then optional extensions.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    const MALFORMED: &str = "a chunk size is malformed";
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    // Only spaces and tabs before the extensions, and no stray CR anywhere: a line another hop
    // could end elsewhere is refused.
    let rest = &line[digits..];
    let rest = &rest[rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
    if digits == 0 || digits > 16 || !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return Err(MALFORMED);
    }
    line[..digits].iter().try_fold(0u64, |size, &b| {
        let digit = (b as char).to_digit(16).unwrap_or_default();
        size.checked_mul(16)
            .map(|s| s + u64::from(digit))
            .ok_or(MALFORMED)
    })
}

pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes one header line: `name: value` and CRLF.
pub fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The line that opens a chunk of `len` bytes: its size in hex, then CRLF.
pub fn chunk_size_line(len: usize) -> Bytes {
    let mut line = Vec::with_capacity(18);
    push_hex(&mut line, len as u64);
    line.extend_from_slice(b"\r\n");
    line.into()
}

pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let nibbles = (16 - n.leading_zeros() as usize / 4).max(1);
    for i in (0..nibbles).rev() {
        out.push(HEX[((n >> (i * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        for n in [0, 7, 10, 255, 4096, u64::MAX] {
            let (mut dec, mut hex) = (Vec::new(), Vec::new());
            push_decimal(&mut dec, n);
            push_hex(&mut hex, n);
            assert_eq!(dec, n.to_string().into_bytes());
            assert_eq!(hex, format!("{n:x}").into_bytes());
        }
        assert_eq!(chunk_size(b"1a\r").unwrap(), 26);
        assert_eq!(chunk_size(b"FF ;x=y").unwrap(), 255);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"-1").is_err());
        assert!(chunk_size(b"1 x").is_err());
        assert!(chunk_size(b"5\r;x\r").is_err());
        assert!(chunk_size(b"5\r\r").is_err());
        assert!(chunk_size(b"5 \t;a=\"b\"").is_ok());
    }

    #[test]
    fn emptied_maps_serve_the_next_head_and_large_ones_are_not_kept() {
        // A thread of its own: the test harness's threads may hold spares of other tests.
        std::thread::spawn(|| {
            assert_eq!(header_map().capacity(), 0);
            let mut map = HeaderMap::with_capacity(10);
            map.insert("x-a", HeaderValue::from_static("1"));
            let capacity = map.capacity();
            drop(Recycled(map));
            let reused = header_map();
            assert!(reused.is_empty());
            assert_eq!(reused.capacity(), capacity);
            assert_eq!(header_map().capacity(), 0);
            recycle(HeaderMap::with_capacity(SPARE_MAP_CAPACITY * 2));
            assert_eq!(header_map().capacity(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn tokens_are_found_in_any_line_and_list_element() {
        let connection = http::header::CONNECTION;
        let mut h = HeaderMap::new();
        assert!(!has_token(&h, &connection, b"close"));
        h.append(&connection, HeaderValue::from_static(" Keep-Alive "));
        assert!(has_token(&h, &connection, b"keep-alive"));
        assert!(!has_token(&h, &connection, b"close"));
        h.append(&connection, HeaderValue::from_static("x-a, CLOSE ,x-b"));
        assert!(has_token(&h, &connection, b"close"));
        assert!(!has_token(&h, &connection, b"clos"));
    }
}
