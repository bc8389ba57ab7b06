//! HTTP/1.1 from clients: our own server codec, driven by the connection's task.
//!
//! hyper's HTTP/1 server ran a general dispatcher per message: it polled read, write and flush
//! states in turn, queued each response in a write buffer of its own, read the clock on every poll
//! for its `Date` cache, and kept the request body behind a channel. A profile put 8 % of the
//! gateway's CPU on the plain proxy route in it. This codec does what a gateway's listener needs
//! and nothing more, as nginx's HTTP module does: read a head, parse it with httparse (header
//! values are slices of the read buffer, not copies), call the service, write the answer's head
//! and as much of its body as is ready in one vectored write.
//!
//! What it does, as RFC 9112 asks of a server:
//! - **Request framing.** `Transfer-Encoding` wins over `Content-Length`; it must end in a single
//!   `chunked` (any other coding is a 400), and a request that carried both is answered and then
//!   the connection is closed, so bytes hidden behind it are never read as a request. Several
//!   `Content-Length`s, or one that is not plain digits, are a 400. `Transfer-Encoding` on an
//!   HTTP/1.0 request is a 400.
//! - **The body** is read from the socket as the service polls it (no channel, no task); the
//!   connection's read buffer is lent to it and handed back when the body ends. A body the service
//!   did not read to its end closes the connection after the answer.
//! - **`Expect: 100-continue`** is answered with `100 Continue` when the service first asks for
//!   body bytes, unless it answered first.
//! - **Response framing.** The service's `Content-Length` is kept and enforced: a body that
//!   yields more or less closes the connection. Without one, an exact size hint becomes a
//!   `Content-Length`, else the body is chunked (or, to an HTTP/1.0 client, runs until the
//!   close). `HEAD`, `204` and `304` answers carry no body. A `Date` is added when missing.
//! - **Persistence.** Keep-alive unless either side said `close` (HTTP/1.0: unless the client
//!   said `keep-alive`). Pipelined requests are answered in order.
//! - **Errors.** A malformed head gets a 400 (431 when it is too large) in the SPEC.md JSON
//!   format, then the connection is closed. Closing after an answer shuts the write side first
//!   and reads what the client still sends for a moment (a "lingering close"), so an unread
//!   upload does not turn into a reset that destroys the answer before the client reads it.
//! - **Shutdown.** When the listener drains, an idle connection is closed at once; one serving a
//!   request finishes it, says `Connection: close` if its head is not yet written, and closes.
//!
//! What it leaves out: upgrades (the gateway proxies no WebSocket or `CONNECT`), and HTTP/2,
//! which hyper serves after `super::first_bytes` saw its preface.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use crate::error::GatewayError;
use crate::http1::{
    self, Chunked, Decoded, HeaderSpans, MAX_HEADERS, chunk_size_line, decode_chunked, push_decimal,
    push_header,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most a request head (request line and headers) may take: hyper's limit (its read
/// buffer's), so tokens and cookies that passed before still pass; Envoy's is 60 KiB, nginx's
/// 32 KiB.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The longest request target: `http::Uri`'s own limit.
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// Headers the gateway may add to a request (X-Forwarded-*, x-request-id, traceparent,
/// x-request-timeout-ms, identity headers): room is made for them when its map is built.
const ADDED_HEADERS: usize = 8;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;
/// The least room a read made while a request is served (watching for the client leaving) needs.
const WATCH_ROOM: usize = 1024;
/// Response bytes queued before the body is polled for more.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Buffers handed to one vectored write.
const MAX_SLICES: usize = 16;
/// How long, and for how many bytes, a closing connection keeps reading what the client sends.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The listener's drain signal, shared by its HTTP/1 connections.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    notify: Notify,
}

impl Drain {
    /// Idle connections close now; busy ones after their current answer.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once the drain has started.
    pub async fn started(&self) {
        loop {
            // Waiting from its creation on (`notify_waiters` wakes it even before a poll), so
            // a start between the check and the wait is not missed.
            let notified = self.notify.notified();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body failed: {0}")]
    Read(#[source] io::Error),
    #[error("the client closed the connection before the request body ended")]
    ClosedEarly,
    #[error("the request body is malformed: {0}")]
    Invalid(&'static str),
}

/// What the connection and the body of the request being served share.
#[derive(Debug, Default)]
struct Shared {
    /// The read side, handed back by the request body when it ends or is dropped.
    returned: Mutex<Option<Returned>>,
    /// Signalled when the body hands the read side back (it may live in another task: hyper's
    /// HTTP/2 client reads request bodies in a task of its own).
    handed_back: Notify,
    /// Who writes the `100 Continue`, and how much of it went out.
    continued: Continue,
}

/// A `100 Continue` is written by the request body, when the service first asks for body bytes,
/// until the answer is ready; then the answer's head writes what is left of a started one, and
/// the body nothing more. One atomic word holds the bytes sent, "answered" and "the body is
/// writing": hyper's HTTP/2 client polls request bodies in a task of its own, which on a
/// multi-thread runtime runs beside the connection's, and the body's "not answered yet, write"
/// must not interleave with the head's "how much went out?" (an interim response after the
/// final one would corrupt the exchange).
#[derive(Debug, Default)]
struct Continue(AtomicUsize);

const ANSWERED: usize = 1 << (usize::BITS - 1);
const WRITING: usize = 1 << (usize::BITS - 2);

impl Continue {
    /// Whether, in `state`, the body may write more of the interim response: not answered, not
    /// writing already, and not all of it out.
    fn open(state: usize) -> bool {
        state & ANSWERED == 0 && state < CONTINUE.len()
    }

    /// Whether the body still has some of a `100 Continue` to write.
    fn pending(&self) -> bool {
        Self::open(self.0.load(Ordering::Acquire))
    }

    /// The body is about to write: how much went out already; `None` when the answer came first
    /// or all of it went out. Must be followed by [`Continue::wrote`] without an `.await`.
    fn claim(&self) -> Option<usize> {
        let mut state = self.0.load(Ordering::Acquire);
        loop {
            if !Self::open(state) {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(state, state | WRITING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(state),
                Err(now) => state = now,
            }
        }
    }

    /// The body wrote `n` more bytes (0 if the socket took none) and lets go.
    fn wrote(&self, n: usize) {
        self.0.fetch_sub(WRITING - n, Ordering::AcqRel);
    }

    /// The answer is ready, and the body writes no more: how much of the interim response went
    /// out; `None` while the body is in the middle of a (non-blocking) write: ask again.
    fn answer(&self) -> Option<usize> {
        let before = self.0.fetch_or(ANSWERED, Ordering::AcqRel);
        (before & WRITING == 0).then_some(before & !ANSWERED)
    }

    /// A new exchange.
    fn reset(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// The connection's read side with its buffer, lent to a request body.
#[derive(Debug)]
struct Returned {
    read: OwnedReadHalf,
    buf: BytesMut,
    rest: Rest,
}

/// What was left of a request body when it was handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    Done,
    Unread(BodyKind),
    /// It failed: the connection's framing is lost.
    Broken,
}

impl Returned {
    /// Reads what is left of the body from the buffer alone (an early answer to a small upload
    /// already received whole); true when the body ended there, so the connection can be kept.
    fn finish_buffered(&mut self) -> bool {
        loop {
            match &mut self.rest {
                Rest::Done => return true,
                Rest::Broken => return false,
                Rest::Unread(BodyKind::Length(left)) => {
                    let Ok(left) = usize::try_from(*left) else {
                        return false;
                    };
                    if self.buf.len() < left {
                        return false;
                    }
                    self.buf.advance(left);
                    self.rest = Rest::Done;
                }
                Rest::Unread(BodyKind::Chunked(state)) => match decode_chunked(state, &mut self.buf) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::Trailers(_)) => self.rest = Rest::Done,
                    Ok(Decoded::NeedMore) => return false,
                    Err(_) => self.rest = Rest::Broken,
                },
            }
        }
    }
}

/// A request's body, read from the client's connection as it is polled.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` once the body ended (or when there was none).
    reading: Option<Reading>,
}

#[derive(Debug)]
struct Reading {
    shared: Arc<Shared>,
    read: OwnedReadHalf,
    buf: BytesMut,
    kind: BodyKind,
    /// The client asked for a `100 Continue` before it sends the body.
    expects_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Length(u64),
    Chunked(Chunked),
}

impl RequestBody {
    pub fn empty() -> Self {
        Self { reading: None }
    }

    /// Hands the read side back to the connection, with what is left of the body.
    fn hand_back(&mut self, rest: impl FnOnce(BodyKind) -> Rest) {
        if let Some(r) = self.reading.take() {
            let returned = Returned {
                read: r.read,
                buf: r.buf,
                rest: rest(r.kind),
            };
            *r.shared.returned.lock().unwrap_or_else(|p| p.into_inner()) = Some(returned);
            r.shared.handed_back.notify_one();
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(r) = &mut self.reading else {
            return Poll::Ready(None);
        };
        loop {
            match &mut r.kind {
                BodyKind::Length(left) => {
                    if !r.buf.is_empty() {
                        let take = r.buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= take as u64;
                        let data = r.buf.split_to(take).freeze();
                        if *left == 0 {
                            self.hand_back(|_| Rest::Done);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyKind::Chunked(state) => {
                    match decode_chunked(state, &mut r.buf).map_err(BodyError::Invalid)? {
                        Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Decoded::Trailers(trailers) => {
                            self.hand_back(|_| Rest::Done);
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Decoded::NeedMore => {}
                    }
                }
            }
            // More bytes are needed; a client waiting for `100 Continue` gets it first, unless
            // the answer is already on its way.
            if r.expects_continue {
                let socket: &TcpStream = r.read.as_ref();
                let continued = &r.shared.continued;
                while continued.pending() {
                    ready!(socket.poll_write_ready(cx)).map_err(BodyError::Read)?;
                    let Some(sent) = continued.claim() else { break };
                    let written = socket.try_write(&CONTINUE[sent..]);
                    continued.wrote(written.as_ref().map_or(0, |n| *n));
                    if let Err(e) = written
                        && e.kind() != io::ErrorKind::WouldBlock
                    {
                        return Poll::Ready(Some(Err(BodyError::Read(e))));
                    }
                }
            }
            r.expects_continue = false;
            if ready!(poll_read(&mut r.read, cx, &mut r.buf)).map_err(BodyError::Read)? == 0 {
                return Poll::Ready(Some(Err(BodyError::ClosedEarly)));
            }
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.hand_back(Rest::Unread);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            this.hand_back(|_| Rest::Broken);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            None => SizeHint::with_exact(0),
            Some(Reading {
                kind: BodyKind::Length(left),
                ..
            }) => SizeHint::with_exact(*left),
            Some(_) => SizeHint::default(),
        }
    }
}

/// Reads what the socket has into `buf`. Through `AsyncRead`, which clears the socket's
/// readiness after a short read, so the next wait costs no failing system call.
fn poll_read(read: &mut OwnedReadHalf, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    buf.reserve(READ_SIZE);
    tokio_util::io::poll_read_buf(Pin::new(read), cx, buf)
}

/// A parsed request head and what it says about the connection.
struct Head {
    request: Request<()>,
    body: Option<BodyKind>,
    keep_alive: bool,
    expects_continue: bool,
    /// The client said `TE: trailers`: it takes trailer fields after a chunked answer.
    takes_trailers: bool,
}

/// Why a request head was refused.
#[derive(Debug)]
enum Refused {
    Malformed(&'static str),
    /// The head is over `MAX_HEAD` or has more than `MAX_HEADERS` headers: 431.
    TooLarge,
    /// The request target is over `MAX_TARGET`: 414.
    TargetTooLong,
}

impl Refused {
    fn response(&self) -> Response<axum::body::Body> {
        let request_id = crate::edge::request_id::generate();
        let (why, status) = match self {
            Self::Malformed(why) => (*why, StatusCode::BAD_REQUEST),
            Self::TooLarge => (
                "the request head is too large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ),
            Self::TargetTooLong => ("the request target is too long", StatusCode::URI_TOO_LONG),
        };
        let mut response = GatewayError::BadRequest(why).to_response(&request_id);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(&crate::edge::request_id::X_REQUEST_ID, request_id);
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The connection's own side of the socket.
struct Conn {
    /// `None` while a request body has it.
    read: Option<OwnedReadHalf>,
    buf: BytesMut,
    write: OwnedWriteHalf,
    out: Out,
}

/// Serves HTTP/1.1 on `io` until the client closes, an answer closes the connection, or `drain`
/// starts while the connection is idle.
pub async fn serve<S, B>(io: TcpStream, service: S, drain: &Drain) -> io::Result<()>
where
    S: hyper::service::Service<Request<super::RequestBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let shared = Arc::new(Shared::default());
    let (read, write) = io.into_split();
    let mut conn = Conn {
        read: Some(read),
        buf: BytesMut::with_capacity(READ_SIZE),
        write,
        out: Out::default(),
    };
    // Registered once for the connection's life, with the task's waker (polled once, it never
    // needs polling again: the task's waker does not change). A drain wakes the task, and
    // `read_head` sees the flag.
    let mut drained = pin!(drain.notify.notified());
    poll_fn(|cx| {
        let _ = drained.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    loop {
        // A new exchange: nothing of the last one's `100 Continue` may precede this answer,
        // even a refusal's.
        shared.continued.reset();
        let Some(read) = conn.read.as_mut() else {
            return Ok(());
        };
        let head = match read_head(read, &mut conn.buf, drain).await? {
            None => return Ok(()),
            Some(Ok(head)) => head,
            Some(Err(refused)) => {
                let (parts, body) = refused.response().into_parts();
                let answer = Answer {
                    version: Version::HTTP_11,
                    head_only: false,
                    keep_alive: false,
                    takes_trailers: false,
                };
                let _ = respond(&shared, &mut conn, parts, body, answer).await;
                return conn.linger().await;
            }
        };
        let Head {
            request,
            body,
            keep_alive,
            expects_continue,
            takes_trailers,
        } = head;
        let mut answer = Answer {
            version: request.version(),
            head_only: request.method() == Method::HEAD,
            keep_alive,
            takes_trailers,
        };
        let has_body = body.is_some();
        let request_body = match (body, conn.read.take()) {
            (Some(kind), Some(read)) => RequestBody {
                reading: Some(Reading {
                    shared: shared.clone(),
                    read,
                    buf: std::mem::take(&mut conn.buf),
                    kind,
                    expects_continue,
                }),
            },
            (_, read) => {
                conn.read = read;
                RequestBody::empty()
            }
        };
        // Pinned where it is made: the request's future is large, and handing it to a helper
        // by value would copy it once more per request.
        let mut call = pin!(service.call(request.map(|()| Either::Left(request_body))));
        let Some(Ok(response)) = poll_fn(|cx| conn.poll_unless_client_left(call.as_mut(), cx)).await else {
            tracing::debug!("the client closed its connection before the answer");
            return Ok(());
        };
        let (parts, response_body) = response.into_parts();
        if has_body {
            // A body the service left unread closes the connection after the answer, unless the
            // rest of it is already in the buffer; said in the head, when it is known by then.
            let mut returned = shared.returned.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(returned) = returned.as_mut() {
                answer.keep_alive &= returned.finish_buffered();
            }
        }
        answer.keep_alive &= !drain.is_draining();
        let (complete, kept) = respond(&shared, &mut conn, parts, response_body, answer).await?;
        answer.keep_alive &= kept;
        if has_body {
            // The body hands the read side back when it ends or is dropped; without the whole body
            // read, its rest would be taken for the next request.
            let mut returned = loop {
                let handed_back = shared.handed_back.notified();
                if let Some(returned) = shared.returned.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    break returned;
                }
                handed_back.await;
            };
            answer.keep_alive &= returned.finish_buffered();
            conn.read = Some(returned.read);
            conn.buf = returned.buf;
        }
        if !(answer.keep_alive && complete) {
            return conn.linger().await;
        }
    }
}

impl Conn {
    /// Polls the service's future while watching the socket when no body is reading it: a
    /// client that closes its connection (or resets it) before the answer cancels the request,
    /// as hyper did. What a client pipelines meanwhile is kept for the next request. `None`: it
    /// left.
    fn poll_unless_client_left<F: Future>(
        &mut self,
        call: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<F::Output>> {
        if let Poll::Ready(output) = call.poll(cx) {
            return Poll::Ready(Some(output));
        }
        // Only while nothing is buffered, as hyper did: a client may pipeline its next requests
        // and then half-close its side, and still wants every answer.
        while let Some(read) = self.read.as_mut()
            && self.buf.is_empty()
        {
            // Into the room the buffer has: the request's head still holds the buffer's front,
            // and making the usual room would copy the buffer into a new one for every request.
            if self.buf.capacity() < WATCH_ROOM {
                self.buf.reserve(READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *read), cx, &mut self.buf) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Closes the connection after its last answer: the write side first, then whatever the
    /// client still sends is read and dropped for a moment, so the answer is not lost to a reset.
    async fn linger(mut self) -> io::Result<()> {
        let _ = self.write.shutdown().await;
        let Some(mut read) = self.read.take() else {
            return Ok(());
        };
        let mut sink = BytesMut::new();
        let mut drained = 0;
        let _ = tokio::time::timeout(LINGER, async {
            while drained < LINGER_BYTES {
                sink.clear();
                match poll_fn(|cx| poll_read(&mut read, cx, &mut sink)).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
        Ok(())
    }
}

/// Waits for a complete request head in `buf`. `None` when the client closed between requests,
/// or the listener drains while this connection is idle.
async fn read_head(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    drain: &Drain,
) -> io::Result<Option<Result<Head, Refused>>> {
    // Parsing starts over from the top on each read, so it waits until the end of a head is in
    // sight: a head trickled in small pieces is not parsed once per piece.
    let mut scanned: usize = 0;
    loop {
        // Empty lines before a request line are ignored (RFC 9112 §2.2): dropped here, so they
        // neither count as a request in progress nor make each read re-parse the buffer.
        let empty = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        if empty > 0 {
            buf.advance(empty);
            scanned = scanned.saturating_sub(empty);
        }
        if scanned == 0 || head_end_after(buf, scanned) {
            match parse_head(buf) {
                Ok(Some(head)) => return Ok(Some(Ok(head))),
                Ok(None) => {}
                Err(refused) => return Ok(Some(Err(refused))),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Some(Err(Refused::TooLarge)));
        }
        scanned = buf.len();
        let read = poll_fn(|cx| {
            if buf.is_empty() && drain.is_draining() {
                return Poll::Ready(None);
            }
            poll_read(read, cx, buf).map(Some)
        })
        .await;
        match read {
            None => return Ok(None),
            Some(Ok(0)) if buf.is_empty() => return Ok(None),
            Some(Ok(0)) => {
                return Ok(Some(Err(Refused::Malformed(
                    "the connection closed inside a request head",
                ))));
            }
            Some(Ok(_)) => {}
            // A reset between requests is a client going away, not an error of ours.
            Some(Err(e)) if buf.is_empty() => {
                tracing::debug!(error = %e, "client connection ended");
                return Ok(None);
            }
            Some(Err(e)) => return Err(e),
        }
    }
}

/// Whether `buf` holds an empty line (`\n\n` or `\n\r\n`) ending after `from`.
fn head_end_after(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    buf[start..]
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .any(|(i, _)| {
            let rest = &buf[start + i + 1..];
            rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n")
        })
}

/// Parses a request head at the front of `buf` and removes it; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Refused> {
    // Neither the headers nor their spans are initialized up front.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(Refused::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooLarge),
        Err(_) => return Err(Refused::Malformed("the request head is malformed")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refused::Malformed("the request method is not valid"))?;
    let version = http1::version(parsed.version);
    let target = parsed.path.unwrap_or_default();
    if target.len() > MAX_TARGET {
        return Err(Refused::TargetTooLong);
    }
    let target = (target.as_ptr() as usize - buf.as_ptr() as usize, target.len());
    // The head is at most MAX_HEAD bytes long (checked above), so offsets fit.
    let spans = HeaderSpans::new(buf, parsed.headers);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Refused::Malformed("the request target is not valid"))?;
    let mut request = Request::new(());
    *request.headers_mut() = http1::header_map();
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    // Which of the headers that shape the exchange are there at all: most requests carry none,
    // and then none is looked up below.
    let mut present = Present::default();
    spans
        .fill(&head, request.headers_mut(), ADDED_HEADERS, |name| {
            present.note(name)
        })
        .map_err(Refused::Malformed)?;
    // RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request, never two in any; which authority
    // a request with two means is a guess another hop could make differently.
    if present.hosts > 1 || (version == Version::HTTP_11 && present.hosts == 0) {
        return Err(Refused::Malformed(
            "a request must carry one Host header (HTTP/1.1: exactly one)",
        ));
    }
    let headers = request.headers();
    let (body, mut keep_alive) = if present.content_length || present.transfer_encoding {
        framing(headers, version)?
    } else {
        (None, true)
    };
    let says = |token: &[u8]| present.connection && http1::has_token(headers, &CONNECTION, token);
    keep_alive &= match version {
        Version::HTTP_10 => says(b"keep-alive") && !says(b"close"),
        _ => !says(b"close"),
    };
    let takes_trailers = present.te && http1::has_token(headers, &http::header::TE, b"trailers");
    let expects_continue = version == Version::HTTP_11
        && body.is_some()
        && present.expect
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if present.content_length && matches!(body, Some(BodyKind::Chunked(_))) {
        // Read as chunked: a Content-Length beside it means nothing, and goes.
        request.headers_mut().remove(CONTENT_LENGTH);
    }
    Ok(Some(Head {
        request,
        body,
        keep_alive,
        expects_continue,
        takes_trailers,
    }))
}

/// How the request's body is delimited, and whether that lets the connection be kept.
fn framing(headers: &HeaderMap, version: Version) -> Result<(Option<BodyKind>, bool), Refused> {
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        if version == Version::HTTP_10 {
            return Err(Refused::Malformed("Transfer-Encoding is not allowed in HTTP/1.0"));
        }
        // Exactly one coding over all the header lines, and it is chunked: any other would reach
        // the backend still coded, or be read differently by another hop.
        let mut listed = codings
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|c| c.trim_ascii())
            .filter(|c| !c.is_empty());
        let only_chunked =
            listed.next().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) && listed.next().is_none();
        if !only_chunked {
            return Err(Refused::Malformed("the only transfer-coding accepted is chunked"));
        }
        // With a Content-Length as well, chunked wins and the connection closes after the answer
        // (RFC 9112 §6.1), so nothing behind this body is read as a request.
        let keep_alive = !headers.contains_key(CONTENT_LENGTH);
        return Ok((Some(BodyKind::Chunked(Chunked::Size)), keep_alive));
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let Some(length) = lengths.next() else {
        return Ok((None, true));
    };
    if lengths.next().is_some() {
        return Err(Refused::Malformed("the request has more than one Content-Length"));
    }
    let length =
        http1::decimal(length.as_bytes()).ok_or(Refused::Malformed("the Content-Length is not a number"))?;
    Ok(((length > 0).then_some(BodyKind::Length(length)), true))
}

/// Which headers that shape a message's exchange it carries, noted as its map is built.
#[derive(Debug, Default)]
struct Present {
    content_length: bool,
    transfer_encoding: bool,
    connection: bool,
    te: bool,
    expect: bool,
    date: bool,
    /// How many `Host` lines.
    hosts: u8,
}

impl Present {
    fn note(&mut self, name: &HeaderName) {
        if name == CONTENT_LENGTH {
            self.content_length = true;
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == CONNECTION {
            self.connection = true;
        } else if name == http::header::TE {
            self.te = true;
        } else if name == EXPECT {
            self.expect = true;
        } else if name == DATE {
            self.date = true;
        } else if name == http::header::HOST {
            self.hosts = self.hosts.saturating_add(1);
        }
    }
}

/// How the answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// To an HTTP/1.0 client, a body of unknown size runs until the connection closes.
    Close,
}

/// What the request decided about its answer.
#[derive(Debug, Clone, Copy)]
struct Answer {
    version: Version,
    head_only: bool,
    keep_alive: bool,
    takes_trailers: bool,
}

/// Writes the answer. Returns whether it ended cleanly (its body did not fail or break its
/// length, and does not end with the connection) and whether its head kept the connection.
async fn respond<B>(
    shared: &Shared,
    conn: &mut Conn,
    parts: http::response::Parts,
    body: B,
    answer: Answer,
) -> io::Result<(bool, bool)>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // The body may be mid-write on another thread (a syscall that does not block): wait it out.
    let continued = loop {
        match shared.continued.answer() {
            Some(sent) => break sent.min(CONTINUE.len()),
            None => std::hint::spin_loop(),
        }
    };
    let cut_short = if continued > 0 {
        &CONTINUE[continued..]
    } else {
        &[][..]
    };
    let (framing, kept) = conn.out.encode_head(&parts, &body, answer, cut_short);
    // Written: the map goes to the next head parsed (see `http1::header_map`).
    http1::recycle(parts.headers);
    let Conn { out, write, .. } = conn;
    let mut body = pin!(body);
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut ended = framing == Framing::None;
    let mut broken = false;
    poll_fn(|cx| {
        loop {
            if !ended && out.queued < WRITE_HIGH_WATER {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) if data.is_empty() => {}
                            Ok(data) => match framing {
                                Framing::Length(_) if data.len() as u64 > left => {
                                    tracing::debug!("a response body is longer than its Content-Length");
                                    broken = true;
                                    ended = true;
                                }
                                Framing::Length(_) => {
                                    left -= data.len() as u64;
                                    out.push(data);
                                }
                                Framing::Chunked => out.push_chunk(data),
                                _ => out.push(data),
                            },
                            Err(frame) => {
                                if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                                    // Trailer fields only to a client that said it takes them.
                                    out.push_end(Some(&trailers).filter(|_| answer.takes_trailers));
                                    ended = true;
                                }
                            }
                        }
                        continue;
                    }
                    Poll::Ready(None) => {
                        ended = true;
                        match framing {
                            Framing::Chunked => out.push_end(None),
                            Framing::Length(_) if left > 0 => {
                                tracing::debug!("a response body is shorter than its Content-Length");
                                broken = true;
                            }
                            _ => {}
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let e: BoxError = e.into();
                        tracing::debug!(error = %e, "a response body failed; closing the connection");
                        broken = true;
                        ended = true;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if out.is_empty() {
                return if ended {
                    Poll::Ready(Ok::<(), io::Error>(()))
                } else {
                    Poll::Pending
                };
            }
            ready!(out.poll_write(write, cx))?;
        }
    })
    .await?;
    Ok((!broken && framing != Framing::Close, kept))
}

/// The answer's bytes waiting to be written: its head, then body pieces.
#[derive(Debug, Default)]
struct Out {
    head: Vec<u8>,
    /// How much of `head` is written.
    head_sent: usize,
    pieces: VecDeque<Bytes>,
    queued: usize,
}

impl Out {
    fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Writes the status line and headers; `before` goes first (the rest of a `100 Continue`
    /// cut short by a full socket).
    fn encode_head<B: Body>(
        &mut self,
        parts: &http::response::Parts,
        body: &B,
        answer: Answer,
        before: &[u8],
    ) -> (Framing, bool) {
        let head = &mut self.head;
        head.clear();
        self.head_sent = 0;
        head.extend_from_slice(before);
        let status = parts.status;
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
        head.extend_from_slice(match reason {
            Some(reason) => reason.as_bytes(),
            None => status.canonical_reason().unwrap_or("").as_bytes(),
        });
        head.extend_from_slice(b"\r\n");

        // The service's headers, but for the framing ones: one pass, noting what is there.
        let mut present = Present::default();
        for (name, value) in &parts.headers {
            present.note(name);
            if name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
                continue;
            }
            push_header(head, name.as_str(), value.as_bytes());
        }

        // The framing: one checked Content-Length (copies that disagree, or are not plain
        // digits, count as none), or the body's exact size, else chunked or to the close.
        let no_body = status.is_informational() || status == StatusCode::NO_CONTENT;
        let bodiless = no_body || answer.head_only || status == StatusCode::NOT_MODIFIED;
        let declared = present
            .content_length
            .then(|| http1::content_length(&parts.headers).ok().flatten())
            .flatten();
        let length = if no_body || status == StatusCode::NOT_MODIFIED {
            declared.filter(|_| !no_body)
        } else if bodiless {
            // A HEAD answer's body is not sent: a non-empty one is the representation (a
            // gateway error), an empty one says nothing (a proxied HEAD), as hyper had it.
            declared.or(body.size_hint().exact().filter(|&n| n > 0))
        } else {
            declared.or(body.size_hint().exact())
        };
        let framing = if bodiless {
            Framing::None
        } else if let Some(length) = length {
            Framing::Length(length)
        } else if answer.version == Version::HTTP_11 {
            Framing::Chunked
        } else {
            Framing::Close
        };
        if let Some(length) = length {
            head.extend_from_slice(b"content-length: ");
            push_decimal(head, length);
            head.extend_from_slice(b"\r\n");
        }
        if framing == Framing::Chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if !present.date {
            head.extend_from_slice(b"date: ");
            date::push(head);
            head.extend_from_slice(b"\r\n");
        }
        // Whether the connection stays: the request's say, then the service's.
        let says_close = present.connection && http1::has_token(&parts.headers, &CONNECTION, b"close");
        let keep_alive = answer.keep_alive && !says_close && framing != Framing::Close;
        if !present.connection {
            if !keep_alive {
                head.extend_from_slice(b"connection: close\r\n");
            } else if answer.version == Version::HTTP_10 {
                head.extend_from_slice(b"connection: keep-alive\r\n");
            }
        } else if !keep_alive && !says_close {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");
        self.queued = head.len();
        (framing, keep_alive)
    }

    fn push(&mut self, data: Bytes) {
        self.queued += data.len();
        self.pieces.push_back(data);
    }

    fn push_chunk(&mut self, data: Bytes) {
        self.push(chunk_size_line(data.len()));
        self.push(data);
        self.push(Bytes::from_static(b"\r\n"));
    }

    fn push_end(&mut self, trailers: Option<&HeaderMap>) {
        match trailers {
            None => self.push(Bytes::from_static(b"0\r\n\r\n")),
            Some(trailers) => {
                let mut end = b"0\r\n".to_vec();
                for (name, value) in trailers {
                    push_header(&mut end, name.as_str(), value.as_bytes());
                }
                end.extend_from_slice(b"\r\n");
                self.push(Bytes::from(end));
            }
        }
    }

    /// One vectored write of what is queued.
    fn poll_write(&mut self, write: &mut OwnedWriteHalf, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        if self.head_sent < self.head.len() {
            slices[0] = IoSlice::new(&self.head[self.head_sent..]);
            count = 1;
        }
        for piece in self.pieces.iter().take(MAX_SLICES - count) {
            slices[count] = IoSlice::new(piece);
            count += 1;
        }
        let mut n = ready!(Pin::new(write).poll_write_vectored(cx, &slices[..count]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.queued -= n;
        let in_head = n.min(self.head.len() - self.head_sent);
        self.head_sent += in_head;
        n -= in_head;
        while n > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            if n < front.len() {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.pieces.pop_front();
        }
        Poll::Ready(Ok(()))
    }
}

/// The `Date` header's value (RFC 9110 §6.6.1), rendered once a second.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn push(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with_borrow_mut(|(at, rendered)| {
            if *at != secs {
                let text = httpdate::fmt_http_date(now);
                rendered.copy_from_slice(&text.as_bytes()[..29]);
                *at = secs;
            }
            out.extend_from_slice(rendered);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interim_response_and_the_answer_never_interleave() {
        let c = Continue::default();
        // The body starts writing; the answer, ready meanwhile, waits for that write to end...
        assert_eq!(c.claim(), Some(0));
        assert_eq!(c.answer(), None);
        c.wrote(10);
        // ...then writes the other 15 bytes itself, and the body writes no more.
        assert_eq!(c.answer(), Some(10));
        assert!(!c.pending());
        assert_eq!(c.claim(), None);

        // Answered before the body asked: no interim response at all.
        c.reset();
        assert!(c.pending());
        assert_eq!(c.answer(), Some(0));
        assert_eq!(c.claim(), None);

        // Written whole in two goes (the socket took part of it), then answered.
        c.reset();
        assert_eq!(c.claim(), Some(0));
        c.wrote(5);
        assert_eq!(c.claim(), Some(5));
        c.wrote(CONTINUE.len() - 5);
        assert!(!c.pending());
        assert_eq!(c.claim(), None);
        assert_eq!(c.answer(), Some(CONTINUE.len()));
    }
}
