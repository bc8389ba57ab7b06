//! The listener: accepts TCP connections and serves HTTP/1.1 (our own codec, `h1`) and h2c
//! (prior knowledge, hyper) on them, then drains on shutdown. The admin API's listener is served
//! the same way.
//!
//! Not `axum::serve`: it has no header-read timeout, so a slowloris client that never finishes its
//! headers would hold a connection forever. Here the connection's head timer (`head_timer`) cuts
//! it off after `header_read_timeout`, open connections are capped by `max_connections`, and
//! shutdown stops accepting at once, lets in-flight requests finish within `shutdown_timeout`,
//! then closes what is left.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::edge::Gateway;

pub mod h1;
mod head_timer;
use h1::Drain;
use head_timer::{HeadTimer, Tracker};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request's body as the listener hands it on: `Left`, read by our HTTP/1.1 codec; `Right`, by
/// hyper's HTTP/2 one.
pub type RequestBody = Either<h1::RequestBody, Incoming>;

/// Serves `gateway` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let server = gateway.snapshot().config.server.clone();
    let max_connections = if server.max_connections == 0 {
        Semaphore::MAX_PERMITS
    } else {
        server.max_connections
    };
    let connections = Connections::default();
    let handler = gateway.clone();
    accept(
        listener,
        server.header_read_timeout,
        max_connections,
        &connections,
        shutdown,
        move |peer, requests: Tracker| {
            let gateway = handler.clone();
            service_fn(move |request| gateway.clone().handle(peer, request, requests.begin()))
        },
    )
    .await?;

    // The listener is closed: new clients are refused instead of queueing behind the drain.
    gateway.start_draining();
    tracing::info!(grace = ?server.shutdown_timeout, "shutting down: finishing in-flight requests");
    match tokio::time::timeout(server.shutdown_timeout, connections.drain()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!("grace period over: closing the connections still open"),
    }
    Ok(())
}

/// Serves `router` (the admin API) on `listener` for the life of the process, with the same
/// header-read timeout as the public listener and at most `max_connections` at once.
pub async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: Duration,
    max_connections: usize,
) -> io::Result<()> {
    accept(
        listener,
        header_read_timeout,
        max_connections,
        &Connections::default(),
        std::future::pending(),
        move |_, requests: Tracker| requests.wrap(TowerToHyperService::new(router.clone())),
    )
    .await
}

/// How a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: the connection opened with the preface.
    H2c,
}

/// The open connections, and how to drain them: HTTP/1.1 ones through our codec's [`Drain`],
/// h2c ones through hyper's graceful shutdown (a GOAWAY), both counted by one task tracker.
#[derive(Default)]
struct Connections {
    tasks: TaskTracker,
    http1: Arc<Drain>,
    http2: GracefulShutdown,
}

impl Connections {
    /// Idle connections close at once, busy ones after their requests; resolves when all are
    /// closed.
    async fn drain(self) {
        self.tasks.close();
        self.http1.start();
        self.http2.shutdown().await;
        self.tasks.wait().await;
    }
}

/// Accepts connections until `shutdown`, each served by `service(peer, requests)` in a task of its
/// own (the service counts its requests with `requests`, for the header-read timeout)
/// and counted in `connections`; at most `max_connections` are open at once. A connection's first
/// bytes must tell its protocol within `header_read_timeout` (see [`first_bytes`]); then each
/// HTTP/1 request head gets as long again ([`HeadTimer`]). The listener is closed on return, and
/// connections still waiting for their first bytes close when the drain starts.
async fn accept<S, B>(
    listener: TcpListener,
    header_read_timeout: Duration,
    max_connections: usize,
    connections: &Connections,
    shutdown: impl Future<Output = ()> + Send,
    service: impl Fn(SocketAddr, Tracker) -> S,
) -> io::Result<()>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(e) => break Err(io::Error::other(e)),
            },
            () = &mut shutdown => break Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: keep serving,
                    // but don't spin on a persistent error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let timer = HeadTimer::new(header_read_timeout);
        let service = service(peer, timer.tracker());
        let (drain, watcher, http2) = (
            connections.http1.clone(),
            connections.http2.watcher(),
            http2.clone(),
        );
        connections.tasks.spawn(async move {
            // A connection that has not said which protocol it speaks when the drain starts has
            // no request in flight: it closes.
            let spoke = tokio::select! {
                spoke = first_bytes(&stream, header_read_timeout) => spoke,
                () = drain.started() => None,
            };
            let served = match spoke {
                Some(Protocol::Http1) => {
                    timer.restart();
                    head_timer::or_expired(&timer, h1::serve(stream, service, &drain))
                        .await
                        .unwrap_or_else(|| {
                            tracing::debug!(%peer, "no request head within header_read_timeout: closed");
                            Ok(())
                        })
                        .map_err(BoxError::from)
                }
                Some(Protocol::H2c) => {
                    let service = Arc::new(service);
                    let service = service_fn(move |request: Request<Incoming>| {
                        service.call(request.map(Either::Right))
                    });
                    watcher
                        .watch(http2.serve_connection(TokioIo::new(stream), service))
                        .await
                        .map_err(BoxError::from)
                }
                None => Ok(()),
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Waits until a new connection's first bytes tell HTTP/1 from the h2c preface; `None` when they
/// do not within `within`, or the client closed. Peeks, so hyper still reads everything. A
/// partial preface (legitimate clients send it whole) is peeked again every 10 ms rather than
/// spun on.
async fn first_bytes(stream: &tokio::net::TcpStream, within: Duration) -> Option<Protocol> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let sniffed = async {
        let mut buf = [0; 24];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if buf[..n] != PREFACE[..n] => return Some(Protocol::Http1),
                Ok(n) if n == PREFACE.len() => return Some(Protocol::H2c),
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(within, sniffed).await.ok().flatten()
}

/// A gateway serving in the background, for tests and `gateway demo`.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free one) and serves in a task.
    pub async fn start(gateway: Arc<Gateway>, addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, gateway, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Graceful shutdown: waits until in-flight requests finished (or the grace period ended).
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.begin_shutdown();
        (&mut self.task).await.map_err(io::Error::other)?
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so call it before binding: a signal that arrives while the listener
/// starts up then begins a graceful shutdown instead of killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {},
                        _ = terminate.recv() => {},
                    }
                }
                _ => {
                    tracing::warn!("cannot install signal handlers; stop the gateway with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
