//! The HTTP/1 header-read timeout, kept per connection rather than per request.
//!
//! A client has `header_read_timeout` to send each request head: from the moment the connection is
//! known to speak HTTP/1, and on a keep-alive connection from the end of the previous response.
//! A connection that goes past it is closed (slowloris clients, and idle keep-alive connections).
//!
//! hyper's own `header_read_timeout` reads the clock, boxes a new timer and registers it with the
//! runtime's timer wheel for every request, then removes it when the head is in: 2–3 % of the
//! proxy's throughput (bench/README.md). Here each connection has one watchdog timer, woken at most
//! once per timeout period; a request only bumps a counter when its head is in and reads the clock
//! when its response ends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::service::{Service, service_fn};
use tokio::time::Instant;

use crate::body::Holding;

/// One connection's watchdog: what it knows of the requests on the connection.
#[derive(Debug, Clone)]
pub struct HeadTimer {
    state: Arc<State>,
    timeout: Duration,
}

#[derive(Debug)]
struct State {
    origin: Instant,
    /// Requests whose head is in and whose response has not ended.
    in_flight: AtomicUsize,
    /// When the connection last began waiting for a head, in nanoseconds after `origin`.
    waiting_since: AtomicU64,
}

impl HeadTimer {
    /// A new connection's timer; [`HeadTimer::restart`] starts the wait for its first head.
    pub fn new(timeout: Duration) -> Self {
        Self {
            state: Arc::new(State {
                origin: Instant::now(),
                in_flight: AtomicUsize::new(0),
                waiting_since: AtomicU64::new(0),
            }),
            timeout,
        }
    }

    /// Starts the wait for the first head again (once the connection's protocol is known).
    pub fn restart(&self) {
        self.state
            .waiting_since
            .store(self.state.now(), Ordering::Relaxed);
    }

    /// What the connection's service uses to count its requests.
    pub fn tracker(&self) -> Tracker {
        Tracker(self.state.clone())
    }

    /// Resolves once the connection has waited longer than the timeout for a request head.
    pub async fn expired(&self) {
        let sleep = tokio::time::sleep(self.timeout);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            match self.state.waiting_since() {
                Some(since) if now >= since + self.timeout => return,
                Some(since) => sleep.as_mut().reset(since + self.timeout),
                // A request is being served: its head arrived in time.
                None => sleep.as_mut().reset(now + self.timeout),
            }
        }
    }
}

/// Counts a connection's requests for its [`HeadTimer`]: [`Tracker::begin`] when a request's head is
/// in, and the guard it returns rides in the response body ([`Tracked`]) until that ends. The
/// gateway's own service does this inside its request future; wrapping the future instead would
/// move that large future once more per request (measured: 5 % of throughput in memmove).
#[derive(Debug, Clone)]
pub struct Tracker(Arc<State>);

impl Tracker {
    pub fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.0.clone())
    }

    /// `service` with its requests counted, for services whose futures are small (the admin API).
    pub fn wrap<S, R, B>(
        self,
        service: S,
    ) -> impl Service<Request<R>, Response = Response<Tracked<B>>, Error = S::Error, Future: Send> + use<S, R, B>
    where
        S: Service<Request<R>, Response = Response<B>>,
        R: Body,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body + Unpin,
    {
        service_fn(move |request| {
            let guard = self.begin();
            let response = service.call(request);
            async move { Ok(response.await?.map(|body| Tracked::new(body, guard))) }
        })
    }
}

impl State {
    /// Nanoseconds since `origin`.
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// When the connection began waiting for its next head; `None` while a request is served.
    fn waiting_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| self.origin + Duration::from_nanos(self.waiting_since.load(Ordering::Relaxed)))
    }
}

/// Counts a request as served until dropped (with its response body, once hyper has written it).
#[derive(Debug)]
pub struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        state.waiting_since.store(state.now(), Ordering::Relaxed);
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as served until it is done.
pub type Tracked<B> = Holding<B, InFlight>;

/// `future`, or `None` if the connection's head timer runs out first.
pub async fn or_expired<F: Future>(timer: &HeadTimer, future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        output = future => Some(output),
        () = timer.expired() => None,
    }
}
