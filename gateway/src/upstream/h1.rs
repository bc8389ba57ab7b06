//! HTTP/1.1 to a backend, on a connection driven by the task that sends the request.
//!
//! hyper's client connection runs in a task of its own: a request crossed a channel to reach it,
//! the response head came back on a oneshot and the body on another channel, so every proxied
//! request woke two tasks several times. Here the request's own task writes the request, parses
//! the response head (httparse, header values sliced out of the read buffer without copies) and
//! reads the body straight from the socket as the client takes it, as nginx's upstream module
//! does. A proxied request now costs one task, woken when the client's request arrives and when
//! the backend's answer does.
//!
//! What the codec does, as RFC 9112 asks of a client:
//! - **Request framing** from the body: none for a bodiless request, `Content-Length` when its
//!   size is known, else `Transfer-Encoding: chunked`; a `Transfer-Encoding` or stale
//!   `Content-Length` in the given headers is never sent. A body that yields more or less than
//!   its declared length fails the request rather than desynchronize the connection.
//! - **Response framing:** no body for `HEAD`, `204` and `304`; chunked when it is the final
//!   transfer-coding (extensions ignored, trailers passed on); else `Content-Length`, whose copies
//!   must agree; else the body runs to the end of the connection. Interim `1xx` answers are
//!   skipped; `101` is refused (the gateway never asks for an upgrade).
//! - **Early answers:** the request body keeps streaming while the response is read, so a backend
//!   may answer first (a `413`, or a full-duplex echo); a write failure then does not hide the
//!   answer.
//! - **Reuse:** a connection goes back to its instance only when the response said keep-alive,
//!   both messages ended exactly, and nothing unasked-for was left in the read buffer. An idle
//!   connection is checked without blocking before it is reused ([`Connection::is_usable`]).
//! - **Limits:** a response head of at most 64 KiB and 100 headers, chunk-size lines of 4 KiB,
//!   trailers of 16 KiB. Past them the request fails with a clear error.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::{SetHeaders, UpstreamBody, X_REQUEST_TIMEOUT_MS};
use crate::http1::{
    self, Chunked, Decoded, HeaderSpans, MAX_HEADERS, chunk_size_line, decode_chunked, push_decimal,
    push_header,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most a response head (status line and headers) may take.
const MAX_HEAD: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Headers the gateway may add to a response (x-request-id, the RateLimit trio): room is made
/// for them when its map is built.
const ADDED_HEADERS: usize = 4;
/// Buffers handed to one vectored write.
const MAX_SLICES: usize = 16;

/// Why a request or its response failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the request failed: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response failed: {0}")]
    Read(#[source] io::Error),
    #[error("the backend closed the connection before it answered")]
    ClosedBeforeResponse,
    #[error("the backend closed the connection before the response ended")]
    ClosedEarly,
    #[error("the response head is malformed: {0}")]
    Parse(#[from] httparse::Error),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the response is invalid: {0}")]
    Invalid(&'static str),
    #[error("reading the request body failed")]
    Body(#[source] BoxError),
    #[error("the request body is {0} than its Content-Length")]
    BodyLength(&'static str),
    #[error("the backend did not answer before the attempt's deadline")]
    TimedOut,
}

/// A request's head, borrowed: the caller keeps it to send again if the attempt fails.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// The request target in origin form (path and query).
    pub target: &'a str,
    /// Sent as `Host`, first; a `Host` among `headers` is not sent.
    pub host: &'a HeaderValue,
    pub headers: &'a HeaderMap,
    /// Sent after `headers`.
    pub set: SetHeaders<'a>,
    /// Sent as `x-request-timeout-ms`; one among `headers` is then not sent.
    pub timeout_ms: Option<u64>,
}

/// Why [`Connection::send`] got no response.
#[derive(Debug)]
pub enum Failure {
    /// Nothing reached the backend (the connection failed on its first write); the body comes
    /// back unread.
    Unsent(Error, UpstreamBody),
    /// The request was, or may have been, sent.
    Sent(Error),
}

/// One HTTP/1.1 connection to a backend, idle or serving one request at a time.
#[derive(Debug)]
pub struct Connection<S> {
    io: S,
    read: BytesMut,
    /// The request head being written, and how much of it went out.
    head: Vec<u8>,
    head_written: usize,
    /// Body bytes (framing included) waiting to be written, front first.
    queue: VecDeque<Bytes>,
    /// The rest of the request body, while it lasts.
    body: Option<BodyWriter>,
    /// A write failed: the request cannot be finished, and the connection is not reused.
    write_failed: bool,
    /// The attempt's deadline, kept with the connection and moved lazily (see
    /// [`Connection::poll_past`]): made once, not per request.
    timer: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug)]
struct BodyWriter {
    body: UpstreamBody,
    framing: Framing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`: the bytes still owed.
    Length(u64),
    Chunked,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            read: BytesMut::with_capacity(READ_SIZE),
            head: Vec::with_capacity(512),
            head_written: 0,
            queue: VecDeque::new(),
            body: None,
            write_failed: false,
            timer: None,
        }
    }

    /// Whether an idle connection can take a request: the backend has not closed it or sent
    /// anything unasked for. Never waits; usually costs no system call, since the reactor has
    /// already marked the socket unreadable.
    pub fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.read).is_pending()
    }

    /// Sends a request and waits for the response head. The response's body reads the rest from
    /// this connection and hands it back with [`ResponseBody::into_reusable`].
    ///
    /// Boxed, as pooled: with TLS state a connection is over a kilobyte, moved at every turn.
    /// The attempt ends with [`Error::TimedOut`] at `deadline`, if the response head is not in
    /// by then.
    pub async fn send(
        mut self: Box<Self>,
        request: Outgoing<'_>,
        body: UpstreamBody,
        deadline: Instant,
    ) -> Result<Response<ResponseBody<S>>, Failure> {
        let framing = self.encode_head(request, &body);
        let head_only = request.method == Method::HEAD;
        // A bodiless request keeps its (empty) body only to hand it back unsent.
        let mut unread = None;
        match framing {
            Some(framing) => self.body = Some(BodyWriter { body, framing }),
            None => unread = Some(body),
        }
        // Nothing else goes out until the head has: a failure on the first write leaves the
        // request unsent, and its body is handed back unread.
        match std::future::poll_fn(|cx| self.poll_until(cx, deadline, Self::poll_write_head)).await {
            Ok(()) => {}
            Err(e) if self.head_written == 0 => {
                let body = self
                    .body
                    .take()
                    .map(|w| w.body)
                    .or(unread)
                    .unwrap_or_else(super::empty);
                return Err(Failure::Unsent(e, body));
            }
            Err(e) => return Err(Failure::Sent(e)),
        }
        let head = std::future::poll_fn(|cx| {
            self.poll_until(cx, deadline, |conn, cx| {
                // The body streams while the answer is awaited: a backend may answer before it
                // has read everything. Only the client's own body failing ends the request here.
                if let Poll::Ready(Err(e @ (Error::Body(_) | Error::BodyLength(_)))) = conn.poll_write(cx) {
                    return Poll::Ready(Err(e));
                }
                conn.poll_read_head(cx, head_only)
            })
        })
        .await
        .map_err(Failure::Sent)?;
        let Head {
            response,
            kind,
            keep_alive,
        } = head;
        Ok(response.map(|()| ResponseBody {
            conn: Some(self),
            kind,
            keep_alive,
        }))
    }

    /// Polls `step`, and while it is pending, the deadline.
    fn poll_until<T>(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Instant,
        mut step: impl FnMut(&mut Self, &mut Context<'_>) -> Poll<Result<T, Error>>,
    ) -> Poll<Result<T, Error>> {
        if let Poll::Ready(done) = step(self, cx) {
            return Poll::Ready(done);
        }
        self.poll_past(cx, deadline).map(|()| Err(Error::TimedOut))
    }

    /// Ready once `deadline` has passed.
    ///
    /// The connection's one timer is moved only when it would fire after `deadline`. Left set
    /// for an earlier request's deadline (a moment earlier, with the same timeout), it fires
    /// early, about once per timeout period, and is then moved to this one: so a request costs
    /// the timer wheel nothing, where a timer of its own is registered and removed every time.
    fn poll_past(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// Writes the request line and headers into `self.head`, with the framing the body needs.
    fn encode_head(&mut self, request: Outgoing<'_>, body: &UpstreamBody) -> Option<Framing> {
        let framing = if body.is_end_stream() {
            None
        } else {
            Some(match body.size_hint().exact() {
                Some(len) => Framing::Length(len),
                None => Framing::Chunked,
            })
        };
        let head = &mut self.head;
        head.clear();
        self.head_written = 0;
        head.extend_from_slice(request.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(request.target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(request.host.as_bytes());
        head.extend_from_slice(b"\r\n");
        let timeout_ms = X_REQUEST_TIMEOUT_MS.as_str();
        for (name, value) in request.headers {
            // The framing is this hop's: what the body needs is written below.
            if name == HOST || name == TRANSFER_ENCODING || (framing.is_some() && name == CONTENT_LENGTH) {
                continue;
            }
            let name = name.as_str();
            if request.timeout_ms.is_some() && name.len() == timeout_ms.len() && name == timeout_ms {
                continue;
            }
            push_header(head, name, value.as_bytes());
        }
        for (name, value) in request.set {
            push_header(head, name.as_str(), value.as_bytes());
        }
        if let Some(ms) = request.timeout_ms {
            push_header(head, timeout_ms, itoa::Buffer::new().format(ms).as_bytes());
        }
        match framing {
            Some(Framing::Length(len)) => {
                head.extend_from_slice(b"content-length: ");
                push_decimal(head, len);
                head.extend_from_slice(b"\r\n");
            }
            Some(Framing::Chunked) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {}
        }
        head.extend_from_slice(b"\r\n");
        framing
    }

    fn poll_write_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.head_written < self.head.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.head[self.head_written..])) {
                Ok(0) => return Poll::Ready(Err(Error::Write(io::ErrorKind::WriteZero.into()))),
                Ok(n) => self.head_written += n,
                // The connection is dropped with the failed request.
                Err(e) => return Poll::Ready(Err(Error::Write(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Moves the request body along: writes what is queued, then takes the body's next frame.
    /// Ready(Ok) once all of it went out. A failure ends the writing for good (the connection
    /// is then not reused) but leaves the reading to go on.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.write_failed {
            return Poll::Ready(Ok(()));
        }
        let result = self.poll_write_inner(cx);
        if let Poll::Ready(Err(_)) = result {
            self.write_failed = true;
            self.body = None;
            self.queue.clear();
        }
        result
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while !self.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for (slot, chunk) in slices.iter_mut().zip(&self.queue) {
                    *slot = IoSlice::new(chunk);
                    count += 1;
                }
                let n = match ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count])) {
                    Ok(0) => return Poll::Ready(Err(Error::Write(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(Error::Write(e))),
                };
                advance(&mut self.queue, n);
            }
            if let Err(e) = ready!(Pin::new(&mut self.io).poll_flush(cx)) {
                return Poll::Ready(Err(Error::Write(e)));
            }
            let Some(writer) = &mut self.body else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(&mut writer.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are not sent: HTTP/1.1 backends rarely expect them on requests.
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    match &mut writer.framing {
                        Framing::Length(left) => {
                            *left = left
                                .checked_sub(data.len() as u64)
                                .ok_or(Error::BodyLength("longer"))?;
                            self.queue.push_back(data);
                        }
                        Framing::Chunked => {
                            self.queue.push_back(chunk_size_line(data.len()));
                            self.queue.push_back(data);
                            self.queue.push_back(Bytes::from_static(b"\r\n"));
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::Body(e))),
                None => {
                    match writer.framing {
                        Framing::Length(0) => {}
                        Framing::Length(_) => return Poll::Ready(Err(Error::BodyLength("shorter"))),
                        Framing::Chunked => self.queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
                    }
                    self.body = None;
                }
            }
        }
    }

    /// Whether the whole request went out.
    fn request_written(&self) -> bool {
        !self.write_failed && self.body.is_none() && self.queue.is_empty()
    }

    /// Whether part of the request body is still to go out (and can).
    fn uploading(&self) -> bool {
        !self.write_failed && (self.body.is_some() || !self.queue.is_empty())
    }

    /// Reads until a final response head is in; interim (1xx) answers are skipped.
    fn poll_read_head(&mut self, cx: &mut Context<'_>, head_only: bool) -> Poll<Result<Head, Error>> {
        loop {
            if !self.read.is_empty() {
                if let Some(mut response) = parse_head(&mut self.read)? {
                    if response.status().is_informational() {
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                            return Poll::Ready(Err(Error::Invalid(
                                "101 Switching Protocols was not asked for",
                            )));
                        }
                        continue;
                    }
                    let (kind, framed) = body_kind(head_only, &mut response)?;
                    let keep_alive = framed && keeps_alive(&response);
                    return Poll::Ready(Ok(Head {
                        response,
                        kind,
                        keep_alive,
                    }));
                }
                if self.read.len() >= MAX_HEAD {
                    return Poll::Ready(Err(Error::HeadTooLarge));
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(if self.read.is_empty() {
                    Error::ClosedBeforeResponse
                } else {
                    Error::ClosedEarly
                }));
            }
        }
    }

    /// One read into the buffer; Ready(Ok(0)) at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read).map_err(Error::Read)
    }
}

/// A final response head, and how its body is delimited.
struct Head {
    response: Response<()>,
    kind: Kind,
    /// Whether the connection may serve another request after this response.
    keep_alive: bool,
}

/// Drops `n` written bytes from the front of `queue`.
fn advance(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else { return };
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        queue.pop_front();
    }
}

/// Parses a response head at the front of `buf` and removes it; `None` while it is incomplete.
/// Header values are slices of one shared buffer, not copies.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Response<()>>, Error> {
    // Neither array is initialized up front: that was 5 KiB of stores for every response.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    )? {
        httparse::Status::Complete(len) if len > MAX_HEAD => return Err(Error::HeadTooLarge),
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let code = parsed.code.unwrap_or_default();
    let version = http1::version(parsed.version);
    // The head is at most MAX_HEAD bytes long (checked above), so offsets fit.
    let spans = HeaderSpans::new(buf, parsed.headers);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("the status code is not valid"))?;
    // A reason phrase of the backend's own goes to the client as it came, as hyper passes it on.
    let reason = parsed
        .reason
        .filter(|r| status.canonical_reason() != Some(*r))
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
    let head = buf.split_to(len).freeze();
    let mut response = Response::new(());
    *response.headers_mut() = http1::header_map();
    *response.status_mut() = status;
    *response.version_mut() = version;
    if let Some(reason) = reason {
        response.extensions_mut().insert(reason);
    }
    spans
        .fill(&head, response.headers_mut(), ADDED_HEADERS, |_| {})
        .map_err(Error::Invalid)?;
    Ok(Some(response))
}

/// How the response's body is delimited, and whether that lets the connection be reused.
fn body_kind(head_only: bool, response: &mut Response<()>) -> Result<(Kind, bool), Error> {
    let status = response.status();
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Kind::Done, true));
    }
    let http10 = response.version() == Version::HTTP_10;
    let headers = response.headers_mut();
    if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // With a Content-Length beside it the message was framed two ways: read it as chunked,
        // drop the Content-Length so it never reaches the client, and close the connection
        // after it (RFC 9112 §6.3); so too for HTTP/1.0, which has no transfer-codings (§6.1).
        let framed = chunked && !http10 && headers.remove(CONTENT_LENGTH).is_none();
        let kind = if chunked {
            Kind::Chunked(Chunked::Size)
        } else {
            Kind::Eof
        };
        return Ok((kind, framed));
    }
    let length = http1::content_length(headers).map_err(Error::Invalid)?;
    Ok(match length {
        Some(0) => (Kind::Done, true),
        Some(len) => (Kind::Length(len), true),
        None => (Kind::Eof, false),
    })
}

/// Whether the backend keeps the connection open after this response.
fn keeps_alive(response: &Response<()>) -> bool {
    let says = |token: &[u8]| http1::has_token(response.headers(), &CONNECTION, token);
    !says(b"close") && (response.version() == Version::HTTP_11 || says(b"keep-alive"))
}

/// What is left of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Done,
    /// `Content-Length`: the bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// No length given: everything until the backend closes.
    Eof,
}

/// A response body read from its connection as it is polled. The request body's rest keeps
/// streaming from here too.
#[derive(Debug)]
pub struct ResponseBody<S> {
    /// `None` once the body failed or the connection was handed back.
    conn: Option<Box<Connection<S>>>,
    kind: Kind,
    keep_alive: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ResponseBody<S> {
    /// The connection, once this body ended and the connection can take another request.
    pub fn into_reusable(&mut self) -> Option<Box<Connection<S>>> {
        let conn = self.conn.as_ref()?;
        if self.kind != Kind::Done || !self.keep_alive || !conn.request_written() || !conn.read.is_empty() {
            return None;
        }
        self.conn.take()
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(None);
        };
        // The rest of the request body, if any, goes out alongside. The client's body failing
        // fails the answer too (the backend would wait for the rest forever); the backend not
        // reading it only stops the writing.
        if let Poll::Ready(Err(e @ (Error::Body(_) | Error::BodyLength(_)))) = conn.poll_write(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match &mut self.kind {
                // A backend may answer before it has read the whole upload (a 202 at once): the
                // body ends when the upload has gone out too, as it did with hyper's client.
                // Unless the backend said it closes: then the rest is not sent (RFC 9112 §9.6).
                Kind::Done if self.keep_alive && conn.uploading() => return Poll::Pending,
                Kind::Done => return Poll::Ready(None),
                Kind::Length(left) => {
                    if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::ClosedEarly)));
                    }
                    let take = conn.read.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    if *left == 0 {
                        self.kind = Kind::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(conn.read.split_to(take).freeze()))));
                }
                Kind::Eof => {
                    if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.kind = Kind::Done;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(conn.read.split().freeze()))));
                }
                Kind::Chunked(state) => {
                    match decode_chunked(state, &mut conn.read).map_err(Error::Invalid)? {
                        Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Decoded::Trailers(trailers) => {
                            self.kind = Kind::Done;
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Decoded::NeedMore => {}
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::ClosedEarly)));
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Body for ResponseBody<S> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            // A broken connection is closed, never reused.
            this.conn = None;
            this.kind = Kind::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind == Kind::Done && !(self.keep_alive && self.conn.as_ref().is_some_and(|c| c.uploading()))
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Done => SizeHint::with_exact(0),
            Kind::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use http::Request;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    fn full(text: &'static str) -> UpstreamBody {
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// A body of unknown length, sent as the receiver yields it.
    fn channel() -> (tokio::sync::mpsc::Sender<&'static str>, UpstreamBody) {
        let (tx, rx) = tokio::sync::mpsc::channel::<&'static str>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let part = rx.recv().await?;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(part.as_bytes()))),
                rx,
            ))
        });
        (tx, StreamBody::new(frames.boxed()).boxed_unsync())
    }

    type Sent = tokio::task::JoinHandle<Result<Response<ResponseBody<DuplexStream>>, Failure>>;

    /// A POST to `target` whose streamed body has begun with `first`, once the backend has it.
    async fn upload(
        target: &str,
        first: &'static str,
    ) -> (tokio::sync::mpsc::Sender<&'static str>, Sent, DuplexStream) {
        let (tx, body) = channel();
        let (conn, mut server) = pair();
        let sent = tokio::spawn(conn.send_request(request(Method::POST, target, body)));
        tx.send(first).await.unwrap();
        received(&mut server, first).await;
        (tx, sent, server)
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
        /// [`Connection::send`] for a whole request (its `Host` header as the host).
        async fn send_request(
            self: Box<Self>,
            request: Request<UpstreamBody>,
        ) -> Result<Response<ResponseBody<S>>, Failure> {
            let (parts, body) = request.into_parts();
            let head = Outgoing {
                method: &parts.method,
                target: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
                host: &parts.headers[HOST],
                headers: &parts.headers,
                set: &[],
                timeout_ms: None,
            };
            self.send(head, body, Instant::now() + std::time::Duration::from_secs(60))
                .await
        }
    }

    fn request(method: Method, target: &str, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = target.parse().unwrap();
        request
            .headers_mut()
            .insert("host", HeaderValue::from_static("backend"));
        request
    }

    fn pair() -> (Box<Connection<DuplexStream>>, DuplexStream) {
        let (client, server) = duplex(256 * 1024);
        (Box::new(Connection::new(client)), server)
    }

    /// What the backend side received, read until `end` appears.
    async fn received(server: &mut DuplexStream, end: &str) -> String {
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        while !String::from_utf8_lossy(&seen).contains(end) {
            let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
                .await
                .expect("the request arrives")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(seen).unwrap()
    }

    async fn collect(body: &mut ResponseBody<DuplexStream>) -> Result<(String, Option<HeaderMap>), Error> {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            match frame?.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((String::from_utf8(data).unwrap(), trailers))
    }

    /// Sends `request`, answers it with `answer` written a byte at a time (so every parser state
    /// meets a buffer boundary), and returns the response with its body read out.
    async fn exchange(
        request: Request<UpstreamBody>,
        answer: &'static str,
    ) -> (
        String,
        Response<ResponseBody<DuplexStream>>,
        Result<(String, Option<HeaderMap>), Error>,
    ) {
        let (conn, mut server) = pair();
        let backend = tokio::spawn(async move {
            let got = received(&mut server, "\r\n\r\n").await;
            for byte in answer.as_bytes() {
                // The client stops reading at a malformed answer.
                if server.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            (got, server)
        });
        let mut response = conn.send_request(request).await.unwrap();
        let body = collect(response.body_mut()).await;
        let (got, _server) = backend.await.unwrap();
        (got, response, body)
    }

    #[test]
    fn the_gateways_headers_follow_the_clients_and_its_timeout_replaces_theirs() {
        let (mut conn, _server) = pair();
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("x-request-timeout-ms", HeaderValue::from_static("999999"));
        let set = [(
            &crate::edge::request_id::X_REQUEST_ID,
            HeaderValue::from_static("id-1"),
        )];
        let request = Outgoing {
            method: &Method::GET,
            target: "/a",
            host: &HeaderValue::from_static("backend"),
            headers: &headers,
            set: &set,
            timeout_ms: Some(1500),
        };
        assert_eq!(conn.encode_head(request, &super::super::empty()), None);
        assert_eq!(
            String::from_utf8_lossy(&conn.head),
            "GET /a HTTP/1.1\r\nhost: backend\r\naccept: */*\r\nx-request-id: id-1\r\n\
             x-request-timeout-ms: 1500\r\n\r\n"
        );
        // Without a timeout of the gateway's, the map's is sent as it is.
        let request = Outgoing {
            set: &[],
            timeout_ms: None,
            ..request
        };
        conn.encode_head(request, &super::super::empty());
        assert_eq!(
            String::from_utf8_lossy(&conn.head),
            "GET /a HTTP/1.1\r\nhost: backend\r\naccept: */*\r\nx-request-timeout-ms: 999999\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn requests_are_framed_by_their_bodies() {
        // No body: no framing headers, whatever the client's headers said.
        let mut get = request(Method::GET, "/a?b=c", super::super::empty());
        get.headers_mut()
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let (got, ..) = exchange(get, "HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(got, "GET /a?b=c HTTP/1.1\r\nhost: backend\r\n\r\n");

        // A known size: Content-Length, the stale one replaced.
        let mut post = request(Method::POST, "/p", full("hello"));
        post.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        let (conn, mut server) = pair();
        let sent = tokio::spawn(conn.send_request(post));
        let got = received(&mut server, "hello").await;
        assert_eq!(
            got,
            "POST /p HTTP/1.1\r\nhost: backend\r\ncontent-length: 5\r\n\r\nhello"
        );
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(sent.await.unwrap().unwrap().status(), 200);

        // An unknown size: chunked, ended with the last chunk.
        let (tx, body) = channel();
        let (conn, mut server) = pair();
        let sent = tokio::spawn(conn.send_request(request(Method::PUT, "/u", body)));
        tx.send("hello ").await.unwrap();
        tx.send("chunked world, 26 bytes").await.unwrap();
        drop(tx);
        let got = received(&mut server, "0\r\n\r\n").await;
        assert!(
            got.starts_with("PUT /u HTTP/1.1\r\nhost: backend\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{got}"
        );
        assert!(
            got.ends_with("\r\n\r\n6\r\nhello \r\n17\r\nchunked world, 26 bytes\r\n0\r\n\r\n"),
            "{got}"
        );
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(sent.await.unwrap().unwrap().status(), 200);
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_declared_length_fails_the_request() {
        let declared = |len| {
            let (tx, body) = channel();
            let body = http_body_util::combinators::UnsyncBoxBody::new(Sized(body, len));
            (tx, body)
        };
        for (len, parts, expected) in [(3, vec!["four"], "longer"), (9, vec!["four"], "shorter")] {
            let (tx, body) = declared(len);
            let (conn, _server) = pair();
            let sent = tokio::spawn(conn.send_request(request(Method::POST, "/", body)));
            for part in parts {
                tx.send(part).await.unwrap();
            }
            drop(tx);
            match sent.await.unwrap() {
                Err(Failure::Sent(Error::BodyLength(said))) => assert_eq!(said, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    /// A body that claims an exact length, whatever it yields.
    struct Sized(UpstreamBody, u64);

    impl Body for Sized {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Pin::new(&mut self.get_mut().0).poll_frame(cx)
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.1)
        }
    }

    #[tokio::test]
    async fn content_length_responses_are_read_exactly_and_the_connection_reused() {
        let (conn, mut server) = pair();
        let backend = tokio::spawn(async move {
            for answer in ["first", "second"] {
                received(&mut server, "\r\n\r\n").await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nx-tag: {answer}\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                );
                server.write_all(head.as_bytes()).await.unwrap();
                server.write_all(answer.as_bytes()).await.unwrap();
            }
            server
        });
        let mut response = conn
            .send_request(request(Method::GET, "/1", super::super::empty()))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-tag"], "first");
        assert_eq!(response.body().size_hint().exact(), Some(5));
        assert_eq!(collect(response.body_mut()).await.unwrap().0, "first");
        let mut conn = response.body_mut().into_reusable().expect("kept alive");
        assert!(conn.is_usable());
        let mut response = conn
            .send_request(request(Method::GET, "/2", super::super::empty()))
            .await
            .unwrap();
        assert_eq!(collect(response.body_mut()).await.unwrap().0, "second");
        let mut conn = response.body_mut().into_reusable().expect("kept alive");

        // The backend closes the idle connection: it is no longer offered.
        drop(backend.await.unwrap());
        tokio::task::yield_now().await;
        assert!(!conn.is_usable());
    }

    #[tokio::test]
    async fn chunked_responses_are_decoded_across_any_boundaries() {
        let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                      5;name=value\r\nhello\r\n1\r\n \r\nA  ; ext\r\n0123456789\r\n0\r\nx-sum: 42\r\n\r\n";
        let (_, mut response, body) =
            exchange(request(Method::GET, "/", super::super::empty()), answer).await;
        let (data, trailers) = body.unwrap();
        assert_eq!(data, "hello 0123456789");
        assert_eq!(trailers.unwrap()["x-sum"], "42");
        assert!(response.body_mut().into_reusable().is_some());

        // Framed two ways: read as chunked, the Content-Length dropped, the connection closed.
        let answer = "HTTP/1.1 299 Fine Indeed\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n";
        let (_, mut response, body) =
            exchange(request(Method::GET, "/", super::super::empty()), answer).await;
        assert_eq!(body.unwrap().0, "0123456789");
        assert!(!response.headers().contains_key(CONTENT_LENGTH));
        assert!(response.body_mut().into_reusable().is_none());
        // The backend's own reason phrase is kept for the client.
        let reason = response.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), b"Fine Indeed");

        // Without trailers, and with bare LF line ends.
        let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\n0\r\n\r\n";
        let (_, mut response, body) =
            exchange(request(Method::GET, "/", super::super::empty()), answer).await;
        assert_eq!(body.unwrap(), ("ok".to_owned(), None));
        assert!(response.body_mut().into_reusable().is_some());
    }

    #[tokio::test]
    async fn bodiless_answers_interim_answers_and_the_end_of_the_connection() {
        // HEAD, 204 and 304 have no body, whatever Content-Length says; 1xx answers are skipped.
        for (method, answer) in [
            (Method::HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            (
                Method::GET,
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            ),
            (
                Method::GET,
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            ),
        ] {
            let (_, mut response, body) = exchange(request(method, "/", super::super::empty()), answer).await;
            assert_eq!(body.unwrap().0, "", "{answer}");
            assert!(response.status() != 100 && response.status() != 103);
            assert!(response.body_mut().into_reusable().is_some(), "{answer}");
        }

        // No length: the body runs to the end of the connection, which is then not reused; nor
        // is one the backend said it would close, or an HTTP/1.0 one.
        for (answer, body) in [
            ("HTTP/1.1 200 OK\r\n\r\nuntil the end", "until the end"),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                "ok",
            ),
            ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok"),
            // "close" wins over "keep-alive"; HTTP/1.0 has no chunked framing to trust.
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                "ok",
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                "ok",
            ),
        ] {
            let (conn, mut server) = pair();
            let backend = tokio::spawn(async move {
                received(&mut server, "\r\n\r\n").await;
                server.write_all(answer.as_bytes()).await.unwrap();
            });
            let mut response = conn
                .send_request(request(Method::GET, "/", super::super::empty()))
                .await
                .unwrap();
            backend.await.unwrap();
            assert_eq!(collect(response.body_mut()).await.unwrap().0, body, "{answer}");
            assert!(response.body_mut().into_reusable().is_none(), "{answer}");
        }
    }

    #[tokio::test]
    async fn malformed_answers_are_errors_not_guesses() {
        let head_errors = [
            ("HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\n", "not a number"),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n", "differing"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                "differing",
            ),
            ("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", "101"),
            ("HTTP/1.1 2000 OK\r\n\r\n", "malformed"),
            ("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "malformed"),
        ];
        for (answer, expected) in head_errors {
            let (conn, mut server) = pair();
            let backend = tokio::spawn(async move {
                received(&mut server, "\r\n\r\n").await;
                server.write_all(answer.as_bytes()).await.unwrap();
                server
            });
            let result = conn
                .send_request(request(Method::GET, "/", super::super::empty()))
                .await;
            let Err(Failure::Sent(e)) = result else {
                panic!("{answer}: {result:?}")
            };
            assert!(e.to_string().contains(expected), "{answer}: {e}");
            drop(backend.await.unwrap());
        }

        let body_errors = [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n",
        ];
        for answer in body_errors {
            let (_, mut response, body) =
                exchange(request(Method::GET, "/", super::super::empty()), answer).await;
            let e = body.unwrap_err();
            assert!(e.to_string().contains("chunk"), "{answer}: {e}");
            assert!(response.body_mut().into_reusable().is_none());
        }

        // Cut short: before the answer, inside the head, inside the body.
        for answer in [
            "",
            "HTTP/1.1 200 OK\r\ncontent-",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
        ] {
            let (conn, mut server) = pair();
            let backend = tokio::spawn(async move {
                received(&mut server, "\r\n\r\n").await;
                server.write_all(answer.as_bytes()).await.unwrap();
            });
            let result = conn
                .send_request(request(Method::GET, "/", super::super::empty()))
                .await;
            backend.await.unwrap();
            let e = match result {
                Err(Failure::Sent(e)) => e,
                Ok(mut response) => collect(response.body_mut()).await.unwrap_err(),
                Err(other) => panic!("{other:?}"),
            };
            assert!(e.to_string().contains("closed the connection"), "{answer:?}: {e}");
        }

        // A head past the limit.
        let (conn, mut server) = pair();
        let backend = tokio::spawn(async move {
            received(&mut server, "\r\n\r\n").await;
            let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n", "a".repeat(MAX_HEAD));
            let _ = server.write_all(huge.as_bytes()).await;
            server
        });
        let result = conn
            .send_request(request(Method::GET, "/", super::super::empty()))
            .await;
        assert!(
            matches!(result, Err(Failure::Sent(Error::HeadTooLarge))),
            "{result:?}"
        );
        drop(backend.await.unwrap());
    }

    #[tokio::test]
    async fn an_answer_during_an_upload_is_not_lost_and_bodies_can_flow_both_ways() {
        // The backend refuses the upload at its head and closes: the 413 is the answer.
        let (tx, sent, mut server) = upload("/upload", "the start").await;
        server
            .write_all(b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbig")
            .await
            .unwrap();
        drop(server);
        let mut response = sent.await.unwrap().unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(collect(response.body_mut()).await.unwrap().0, "big");
        assert!(response.body_mut().into_reusable().is_none());
        drop(tx);

        // An echo: the answer starts before the upload ends, and both keep flowing.
        let (tx, sent, mut server) = upload("/echo", "ping").await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\npong\r\n")
            .await
            .unwrap();
        let mut response = sent.await.unwrap().unwrap();
        let first = response
            .body_mut()
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(first, "pong");
        tx.send("again").await.unwrap();
        drop(tx);
        let reading = tokio::spawn(async move {
            let rest = collect(response.body_mut()).await.unwrap().0;
            (rest, response.body_mut().into_reusable().is_some())
        });
        received(&mut server, "again\r\n0\r\n\r\n").await;
        server.write_all(b"5\r\nagain\r\n0\r\n\r\n").await.unwrap();
        assert_eq!(reading.await.unwrap(), ("again".to_owned(), true));
    }

    #[tokio::test]
    async fn an_answer_that_ends_before_the_upload_waits_for_it() {
        let (tx, sent, mut server) = upload("/later", "first").await;
        server
            .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut response = sent.await.unwrap().unwrap();
        assert_eq!(response.status(), 202);
        assert!(!response.body().is_end_stream(), "the upload is still going");
        let reading = tokio::spawn(async move {
            let rest = collect(response.body_mut()).await.unwrap().0;
            (rest, response.body_mut().into_reusable().is_some())
        });
        tx.send("second").await.unwrap();
        drop(tx);
        let got = received(&mut server, "0\r\n\r\n").await;
        assert!(got.contains("second"), "{got}");
        assert_eq!(reading.await.unwrap(), (String::new(), true));
    }

    #[tokio::test]
    async fn a_client_body_failing_after_the_answer_began_fails_the_answer() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) });
        let body = StreamBody::new(frames.boxed()).boxed_unsync();
        let (conn, mut server) = pair();
        let sent = tokio::spawn(conn.send_request(request(Method::POST, "/echo", body)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"ping"))))
            .await
            .unwrap();
        received(&mut server, "ping").await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\npong\r\n")
            .await
            .unwrap();
        let mut response = sent.await.unwrap().unwrap();
        tx.send(Err("the client went away".into())).await.unwrap();
        let e = collect(response.body_mut()).await.unwrap_err();
        assert!(matches!(e, Error::Body(_)), "{e}");
        assert!(response.body_mut().into_reusable().is_none());
    }

    /// The connection's one timer serves each request's own deadline: it is moved earlier for a
    /// shorter one, and an earlier request's deadline passing ends nothing.
    #[tokio::test(start_paused = true)]
    async fn each_request_times_out_at_its_own_deadline() {
        const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        async fn send(
            conn: Box<Connection<DuplexStream>>,
            server: &mut DuplexStream,
            timeout: Duration,
            answer_after: Option<Duration>,
        ) -> (Result<Box<Connection<DuplexStream>>, Error>, Duration) {
            let started = Instant::now();
            let headers = HeaderMap::new();
            let head = Outgoing {
                method: &Method::GET,
                target: "/",
                host: &HeaderValue::from_static("backend"),
                headers: &headers,
                set: &[],
                timeout_ms: None,
            };
            let sent = conn.send(head, super::super::empty(), started + timeout);
            let answer = async {
                received(server, "\r\n\r\n").await;
                if let Some(after) = answer_after {
                    tokio::time::sleep(after).await;
                    server.write_all(OK.as_bytes()).await.unwrap();
                }
                std::future::pending::<()>().await
            };
            let result = tokio::select! {
                result = sent => result,
                () = answer => unreachable!(),
            };
            let result = match result {
                Ok(mut response) => Ok(response.body_mut().into_reusable().expect("reusable")),
                Err(Failure::Sent(e) | Failure::Unsent(e, _)) => Err(e),
            };
            (result, started.elapsed())
        }
        let (conn, mut server) = pair();
        // Answered within a 10 s deadline: the timer is left set for it.
        let (conn, took) = send(
            conn,
            &mut server,
            Duration::from_secs(10),
            Some(Duration::from_secs(1)),
        )
        .await;
        assert_eq!(took, Duration::from_secs(1));
        // A 20 s deadline outlives the first one (9 s from now): that one passing ends nothing.
        let (conn, took) = send(
            conn.unwrap(),
            &mut server,
            Duration::from_secs(20),
            Some(Duration::from_secs(15)),
        )
        .await;
        assert_eq!(took, Duration::from_secs(15));
        // A 2 s deadline, earlier than the timer's: moved, and it ends the silent attempt.
        let (result, took) = send(conn.unwrap(), &mut server, Duration::from_secs(2), None).await;
        assert!(matches!(result, Err(Error::TimedOut)), "{result:?}");
        assert_eq!(took, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_first_write_hands_the_request_back() {
        let (client, server) = duplex(1024);
        drop(server);
        let result = Box::new(Connection::new(client))
            .send_request(request(Method::POST, "/x", full("kept")))
            .await;
        let Err(Failure::Unsent(_, unsent)) = result else {
            panic!("{result:?}")
        };
        assert_eq!(unsent.collect().await.unwrap().to_bytes(), "kept");
    }
}
