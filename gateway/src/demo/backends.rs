//! The demo backends: three small JSON services (users, orders, catalog) that `gateway demo`
//! runs on loopback behind the gateway and that the end-to-end tests proxy to.
//!
//! This module owns the services' fixed data set, their routers, the endpoints every service
//! shares (`/health`, `/echo`, `/bytes`, `/upload`, `/events`), the fault-injection knobs
//! (`?delay_ms=`, `?fail=`, `?fail_rate=`) and spawning the services on a local port.
//!
//! The data is static and self-consistent: every order references an existing user and
//! existing products, and its total is the sum of the catalog prices of its items.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One of the bundled demo services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoService {
    /// User accounts: `/users`.
    Users,
    /// Orders placed by users: `/orders`.
    Orders,
    /// The product catalog: `/products`.
    Catalog,
}

impl DemoService {
    /// Every demo service, in the order `spawn_all` starts them.
    pub const ALL: [DemoService; 3] = [DemoService::Users, DemoService::Orders, DemoService::Catalog];

    /// The service's short name: `"users"`, `"orders"` or `"catalog"`.
    pub fn name(self) -> &'static str {
        match self {
            DemoService::Users => "users",
            DemoService::Orders => "orders",
            DemoService::Catalog => "catalog",
        }
    }
}

impl fmt::Display for DemoService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds the router of `service`: its own resource endpoints, the endpoints every service
/// shares, JSON 404/405 fallbacks, and the fault-injection knobs applied to all of them.
pub fn app(service: DemoService) -> Router {
    let resources = match service {
        DemoService::Users => users_routes(),
        DemoService::Orders => orders_routes(),
        DemoService::Catalog => catalog_routes(),
    };
    resources
        .merge(shared_routes(service))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // `layer` (not `route_layer`) so the knobs also apply to the fallbacks: a test can
        // inject a delay or a failure on any path.
        .layer(middleware::from_fn(knobs))
}

/// A demo service serving on a local port. Dropping it stops the service.
#[derive(Debug)]
pub struct RunningBackend {
    /// Which service this is.
    pub service: DemoService,
    /// The address the service actually listens on (the real port when bound to port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningBackend {
    /// The service's base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        // A wildcard bind address is not something a client can connect to.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }
}

impl Drop for RunningBackend {
    fn drop(&mut self) {
        // The graceful-shutdown signal makes axum close idle keep-alive connections, so a
        // client's pooled connection does not keep reaching a backend that was "stopped";
        // aborting the accept task closes the listener right away instead of after the
        // in-flight requests finish.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

/// Binds `addr` (use port 0 for any free port) and serves `service` on it in a tokio task
/// until the returned handle is dropped.
pub async fn spawn(service: DemoService, addr: SocketAddr) -> io::Result<RunningBackend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = axum::serve(listener, app(service)).with_graceful_shutdown(async move {
        // A dropped sender means the same as an explicit stop.
        let _ = shutdown_rx.await;
    });
    let task = tokio::spawn(async move {
        if let Err(err) = server.await {
            tracing::warn!(service = service.name(), %addr, error = %err, "demo backend stopped");
        }
    });
    tracing::debug!(service = service.name(), %addr, "demo backend listening");
    Ok(RunningBackend {
        service,
        addr,
        shutdown: Some(shutdown_tx),
        task,
    })
}

/// Starts every demo service on its own free port of 127.0.0.1, in [`DemoService::ALL`] order.
pub async fn spawn_all() -> io::Result<Vec<RunningBackend>> {
    let mut running = Vec::with_capacity(DemoService::ALL.len());
    for service in DemoService::ALL {
        // On error the ones already started are dropped, and so stopped, with `running`.
        running.push(spawn(service, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?);
    }
    Ok(running)
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct User {
    id: &'static str,
    name: &'static str,
    email: &'static str,
    created_at: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Product {
    id: &'static str,
    name: &'static str,
    price_cents: u64,
    currency: &'static str,
    in_stock: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderItem {
    product_id: &'static str,
    quantity: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    id: &'static str,
    user_id: &'static str,
    status: &'static str,
    items: &'static [OrderItem],
    total_cents: u64,
    currency: &'static str,
    created_at: &'static str,
}

static USERS: [User; 5] = [
    User {
        id: "u1",
        name: "Ada Lovelace",
        email: "ada@example.com",
        created_at: "2024-01-15T09:30:00Z",
    },
    User {
        id: "u2",
        name: "Grace Hopper",
        email: "grace@example.com",
        created_at: "2024-02-03T14:05:00Z",
    },
    User {
        id: "u3",
        name: "Alan Turing",
        email: "alan@example.com",
        created_at: "2024-03-21T08:45:00Z",
    },
    User {
        id: "u4",
        name: "Katherine Johnson",
        email: "katherine@example.com",
        created_at: "2024-05-09T17:20:00Z",
    },
    User {
        id: "u5",
        name: "Edsger Dijkstra",
        email: "edsger@example.com",
        created_at: "2024-06-30T11:10:00Z",
    },
];

static PRODUCTS: [Product; 6] = [
    Product {
        id: "p1",
        name: "Mechanical Keyboard",
        price_cents: 8999,
        currency: "USD",
        in_stock: true,
    },
    Product {
        id: "p2",
        name: "Wireless Mouse",
        price_cents: 2999,
        currency: "USD",
        in_stock: true,
    },
    Product {
        id: "p3",
        name: "27-inch 4K Monitor",
        price_cents: 34999,
        currency: "USD",
        in_stock: false,
    },
    Product {
        id: "p4",
        name: "USB-C Hub",
        price_cents: 4599,
        currency: "USD",
        in_stock: true,
    },
    Product {
        id: "p5",
        name: "Laptop Stand",
        price_cents: 3999,
        currency: "USD",
        in_stock: true,
    },
    Product {
        id: "p6",
        name: "Noise-Cancelling Headphones",
        price_cents: 24999,
        currency: "USD",
        in_stock: false,
    },
];

static ORDERS: [Order; 8] = [
    Order {
        id: "o1",
        user_id: "u1",
        status: "delivered",
        items: &[
            OrderItem {
                product_id: "p1",
                quantity: 1,
            },
            OrderItem {
                product_id: "p2",
                quantity: 1,
            },
        ],
        total_cents: 11998,
        currency: "USD",
        created_at: "2024-07-02T10:15:00Z",
    },
    Order {
        id: "o2",
        user_id: "u1",
        status: "shipped",
        items: &[OrderItem {
            product_id: "p4",
            quantity: 2,
        }],
        total_cents: 9198,
        currency: "USD",
        created_at: "2024-08-11T16:40:00Z",
    },
    Order {
        id: "o3",
        user_id: "u2",
        status: "paid",
        items: &[OrderItem {
            product_id: "p3",
            quantity: 1,
        }],
        total_cents: 34999,
        currency: "USD",
        created_at: "2024-08-19T09:05:00Z",
    },
    Order {
        id: "o4",
        user_id: "u3",
        status: "pending",
        items: &[
            OrderItem {
                product_id: "p5",
                quantity: 1,
            },
            OrderItem {
                product_id: "p2",
                quantity: 2,
            },
        ],
        total_cents: 9997,
        currency: "USD",
        created_at: "2024-09-01T12:00:00Z",
    },
    Order {
        id: "o5",
        user_id: "u3",
        status: "cancelled",
        items: &[OrderItem {
            product_id: "p6",
            quantity: 1,
        }],
        total_cents: 24999,
        currency: "USD",
        created_at: "2024-09-14T18:30:00Z",
    },
    Order {
        id: "o6",
        user_id: "u4",
        status: "delivered",
        items: &[
            OrderItem {
                product_id: "p1",
                quantity: 1,
            },
            OrderItem {
                product_id: "p5",
                quantity: 1,
            },
            OrderItem {
                product_id: "p4",
                quantity: 1,
            },
        ],
        total_cents: 17597,
        currency: "USD",
        created_at: "2024-10-05T07:55:00Z",
    },
    Order {
        id: "o7",
        user_id: "u5",
        status: "paid",
        items: &[OrderItem {
            product_id: "p2",
            quantity: 3,
        }],
        total_cents: 8997,
        currency: "USD",
        created_at: "2024-10-22T13:25:00Z",
    },
    Order {
        id: "o8",
        user_id: "u2",
        status: "shipped",
        items: &[
            OrderItem {
                product_id: "p6",
                quantity: 1,
            },
            OrderItem {
                product_id: "p4",
                quantity: 1,
            },
        ],
        total_cents: 29598,
        currency: "USD",
        created_at: "2024-11-03T20:10:00Z",
    },
];

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// How much of a request body `/echo` keeps (and reports back when it is all there was).
const ECHO_BODY_LIMIT: usize = 64 * 1024;

/// The longest `delay_ms` / `interval_ms` honoured; larger values are clamped to it.
const MAX_DELAY_MS: u64 = 60_000;

/// The most events one `/events` request may ask for.
const MAX_EVENTS: u64 = 10_000;

/// `/bytes` serves every chunk out of this one static buffer, so any size costs no allocation.
static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A failed request, answered as `{"error": message}` so clients of the demo services only
/// ever have to parse JSON.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

fn json_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// The query string's decoded `(name, value)` pairs, in order, repeats included.
fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(pairs)| pairs)
        .map_err(|rejection| {
            json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid query string: {}", rejection.body_text()),
            )
        })
}

/// The first value of query parameter `name`.
fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn parse_millis(name: &str, value: &str) -> Result<Duration, ApiError> {
    let ms: u64 = value.trim().parse().map_err(|_| {
        json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid {name} {value:?}: expected a whole number of milliseconds"),
        )
    })?;
    Ok(Duration::from_millis(ms.min(MAX_DELAY_MS)))
}

/// Streams `body` to the end, counting its bytes and keeping at most the first `keep` of them,
/// so that arbitrarily large uploads never sit in memory.
async fn drain_body(body: Body, keep: usize) -> Result<(u64, Vec<u8>), ApiError> {
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    let mut kept = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            json_error(
                StatusCode::BAD_REQUEST,
                format!("failed to read request body: {err}"),
            )
        })?;
        total += chunk.len() as u64;
        let room = keep.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok((total, kept))
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp.
fn rfc3339_utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

// ---------------------------------------------------------------------------------------------
// Knobs
// ---------------------------------------------------------------------------------------------

/// Fault injection read from the query string of any request.
#[derive(Debug, Default, PartialEq)]
struct Knobs {
    delay: Option<Duration>,
    fail: Option<StatusCode>,
    fail_rate: Option<f64>,
}

impl Knobs {
    fn from_uri(uri: &Uri) -> Result<Knobs, ApiError> {
        let pairs = query_pairs(uri)?;
        let mut knobs = Knobs::default();
        if let Some(value) = param(&pairs, "delay_ms") {
            knobs.delay = Some(parse_millis("delay_ms", value)?);
        }
        if let Some(value) = param(&pairs, "fail") {
            let status = value
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|code| (400..=599).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| {
                    json_error(
                        StatusCode::BAD_REQUEST,
                        format!("invalid fail {value:?}: expected a status code in 400..=599"),
                    )
                })?;
            knobs.fail = Some(status);
        }
        if let Some(value) = param(&pairs, "fail_rate") {
            let rate = value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|rate| (0.0..=1.0).contains(rate))
                .ok_or_else(|| {
                    json_error(
                        StatusCode::BAD_REQUEST,
                        format!("invalid fail_rate {value:?}: expected a probability in 0..=1"),
                    )
                })?;
            knobs.fail_rate = Some(rate);
        }
        Ok(knobs)
    }
}

fn injected_failure(status: StatusCode) -> Response {
    (
        status,
        Json(json!({ "error": "injected failure", "status": status.as_u16() })),
    )
        .into_response()
}

/// Middleware applying [`Knobs`]: delay first, then the forced or random failure, so a test
/// can simulate a slow upstream that then errors.
async fn knobs(req: Request, next: Next) -> Response {
    let knobs = match Knobs::from_uri(req.uri()) {
        Ok(knobs) => knobs,
        Err(error) => return error.into_response(),
    };
    if let Some(delay) = knobs.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = knobs.fail {
        return injected_failure(status);
    }
    // `fastrand::f64` is in [0, 1), so a rate of 0 never fails and 1 always does.
    if knobs.fail_rate.is_some_and(|rate| fastrand::f64() < rate) {
        return injected_failure(StatusCode::SERVICE_UNAVAILABLE);
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Endpoints every service has
// ---------------------------------------------------------------------------------------------

fn shared_routes(service: DemoService) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/bytes", get(bytes_endpoint))
        .route("/upload", post(upload))
        .route("/events", get(events))
        .with_state(service)
}

async fn health(State(service): State<DemoService>) -> Response {
    Json(json!({ "status": "ok", "service": service.name() })).into_response()
}

async fn echo(State(service): State<DemoService>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let values = headers
            .entry(name.as_str())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = values {
            values.push(Value::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    let (body_bytes, kept) = drain_body(body, ECHO_BODY_LIMIT).await?;
    // A truncated body is reported as null rather than as a misleading prefix.
    let body = if body_bytes <= ECHO_BODY_LIMIT as u64 {
        String::from_utf8(kept).ok()
    } else {
        None
    };
    Ok(Json(json!({
        "service": service.name(),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
        "body": body,
    }))
    .into_response())
}

/// A body of `remaining` bytes of `b'x'` that knows its exact length, so hyper sends a
/// `content-length` and the bytes come straight from [`FILLER`].
struct FillerBody {
    remaining: u64,
}

impl http_body::Body for FillerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(FILLER.len() as u64) as usize;
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILLER[..len])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

async fn bytes_endpoint(uri: Uri) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    let value = param(&pairs, "size")
        .ok_or_else(|| json_error(StatusCode::BAD_REQUEST, "missing size: use /bytes?size=N"))?;
    let size = value.trim().parse::<u64>().map_err(|_| {
        json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid size {value:?}: expected a number of bytes"),
        )
    })?;
    let mut response = Response::new(Body::new(FillerBody { remaining: size }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

async fn upload(body: Body) -> Result<Response, ApiError> {
    let (bytes, _) = drain_body(body, 0).await?;
    Ok(Json(json!({ "bytes": bytes })).into_response())
}

async fn events(uri: Uri) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    let count = match param(&pairs, "n") {
        None => 5,
        Some(value) => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|count| *count <= MAX_EVENTS)
            .ok_or_else(|| {
                json_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid n {value:?}: expected a number of events up to {MAX_EVENTS}"),
                )
            })?,
    };
    let interval = match param(&pairs, "interval_ms") {
        None => Duration::from_millis(100),
        Some(value) => parse_millis("interval_ms", value)?,
    };
    // Each event is its own stream item, hence its own body frame: hyper writes it out as
    // soon as it is produced instead of waiting for the whole response.
    let stream = futures_util::stream::unfold(0_u64, move |seq| async move {
        if seq >= count {
            return None;
        }
        if seq > 0 {
            tokio::time::sleep(interval).await;
        }
        let event = Bytes::from(format!("data: {{\"seq\":{seq}}}\n\n"));
        Some((Ok::<_, Infallible>(event), seq + 1))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    json_error(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed on {}", uri.path()),
    )
}

// ---------------------------------------------------------------------------------------------
// users
// ---------------------------------------------------------------------------------------------

/// Where `POST /users` takes its ids from; per router so each test app starts at `u6`.
#[derive(Clone)]
struct UsersState {
    next_id: Arc<AtomicU64>,
}

#[derive(Debug, Deserialize)]
struct NewUser {
    name: String,
    email: String,
}

fn users_routes() -> Router {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", get(get_user))
        .with_state(UsersState {
            next_id: Arc::new(AtomicU64::new(USERS.len() as u64 + 1)),
        })
}

async fn list_users() -> Response {
    Json(&USERS).into_response()
}

async fn get_user(Path(id): Path<String>) -> Result<Response, ApiError> {
    let user = USERS
        .iter()
        .find(|user| user.id == id)
        .ok_or_else(|| json_error(StatusCode::NOT_FOUND, format!("user {id} not found")))?;
    Ok(Json(user).into_response())
}

async fn create_user(
    State(state): State<UsersState>,
    payload: Result<Json<NewUser>, JsonRejection>,
) -> Result<Response, ApiError> {
    // Axum's own rejections are plain text; keep every error of the demo services JSON.
    let Json(new_user) =
        payload.map_err(|rejection| json_error(rejection.status(), rejection.body_text()))?;
    let name = new_user.name.trim();
    let email = new_user.email.trim();
    if name.is_empty() {
        return Err(json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must not be empty",
        ));
    }
    if !email.contains('@') {
        return Err(json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid email {email:?}"),
        ));
    }
    let id = format!("u{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/users/{id}"))],
        Json(json!({
            "id": id,
            "name": name,
            "email": email,
            "createdAt": rfc3339_utc(now),
        })),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// orders
// ---------------------------------------------------------------------------------------------

fn orders_routes() -> Router {
    Router::new()
        .route("/orders", get(list_orders))
        .route("/orders/{id}", get(get_order))
}

async fn list_orders(uri: Uri) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    let user_id = param(&pairs, "userId");
    let orders: Vec<&Order> = ORDERS
        .iter()
        .filter(|order| user_id.is_none_or(|user_id| order.user_id == user_id))
        .collect();
    Ok(Json(orders).into_response())
}

async fn get_order(Path(id): Path<String>) -> Result<Response, ApiError> {
    let order = ORDERS
        .iter()
        .find(|order| order.id == id)
        .ok_or_else(|| json_error(StatusCode::NOT_FOUND, format!("order {id} not found")))?;
    Ok(Json(order).into_response())
}

// ---------------------------------------------------------------------------------------------
// catalog
// ---------------------------------------------------------------------------------------------

fn catalog_routes() -> Router {
    Router::new()
        .route("/products", get(list_products))
        .route("/products/recommended", get(recommended))
        .route("/products/{id}", get(get_product))
}

/// Every fourth call to `/products/recommended` is this slow: the demo's "ML service" that a
/// GraphQL field with a short timeout and a fallback degrades around.
const SLOW_RECOMMENDATION: Duration = Duration::from_secs(1);
static RECOMMENDATION_CALLS: AtomicU64 = AtomicU64::new(0);

/// `GET /products/recommended?userId=u1`: products the user has not ordered yet.
async fn recommended(uri: Uri) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    let user_id = param(&pairs, "userId").unwrap_or_default();
    if RECOMMENDATION_CALLS.fetch_add(1, Ordering::Relaxed) % 4 == 3 {
        tokio::time::sleep(SLOW_RECOMMENDATION).await;
    }
    let bought: Vec<&str> = ORDERS
        .iter()
        .filter(|order| order.user_id == user_id)
        .flat_map(|order| order.items.iter().map(|item| item.product_id))
        .collect();
    let products: Vec<&Product> = PRODUCTS
        .iter()
        .filter(|product| !bought.contains(&product.id))
        .take(3)
        .collect();
    Ok(Json(products).into_response())
}

/// `GET /products`, or with `ids` (comma-joined, repeated, or both) the batch lookup a
/// fan-out layer makes: results follow the requested order, unknown ids are skipped and a
/// repeated id is returned once.
async fn list_products(uri: Uri) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    if param(&pairs, "ids").is_none() {
        return Ok(Json(&PRODUCTS).into_response());
    }
    let requested = pairs
        .iter()
        .filter(|(key, _)| key == "ids")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim);
    let mut products: Vec<&Product> = Vec::new();
    for id in requested {
        if let Some(product) = PRODUCTS.iter().find(|product| product.id == id)
            && !products.iter().any(|seen| seen.id == product.id)
        {
            products.push(product);
        }
    }
    Ok(Json(products).into_response())
}

async fn get_product(Path(id): Path<String>) -> Result<Response, ApiError> {
    let product = PRODUCTS
        .iter()
        .find(|product| product.id == id)
        .ok_or_else(|| json_error(StatusCode::NOT_FOUND, format!("product {id} not found")))?;
    Ok(Json(product).into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn send(service: DemoService, req: http::Request<Body>) -> (StatusCode, Response) {
        let response = app(service).oneshot(req).await.unwrap();
        (response.status(), response)
    }

    async fn get_json(service: DemoService, uri: &str) -> (StatusCode, Value) {
        let req = http::Request::get(uri).body(Body::empty()).unwrap();
        let (status, response) = send(service, req).await;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    async fn fetch_json(url: &str) -> Value {
        let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn ids(value: &Value) -> Vec<&str> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn names_are_distinct_and_stable() {
        let names: Vec<_> = DemoService::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["users", "orders", "catalog"]);
    }

    #[test]
    fn orders_reference_existing_users_and_products_and_totals_add_up() {
        for order in &ORDERS {
            assert!(USERS.iter().any(|user| user.id == order.user_id), "{order:?}");
            let total: u64 = order
                .items
                .iter()
                .map(|item| {
                    let product = PRODUCTS.iter().find(|p| p.id == item.product_id).unwrap();
                    product.price_cents * u64::from(item.quantity)
                })
                .sum();
            assert_eq!(order.total_cents, total, "{}", order.id);
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[tokio::test]
    async fn user_lookup() {
        let (status, body) = get_json(DemoService::Users, "/users/u2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "Grace Hopper");
        assert_eq!(body["email"], "grace@example.com");
        assert_eq!(body["createdAt"], "2024-02-03T14:05:00Z");

        let (status, body) = get_json(DemoService::Users, "/users").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&body), ["u1", "u2", "u3", "u4", "u5"]);
    }

    #[tokio::test]
    async fn missing_things_are_json_404s() {
        let (status, body) = get_json(DemoService::Users, "/users/u9").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({ "error": "user u9 not found" }));

        let (status, body) = get_json(DemoService::Orders, "/orders/o9").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({ "error": "order o9 not found" }));

        // Routes belong to their own service only.
        let (status, body) = get_json(DemoService::Catalog, "/users/u1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].is_string());

        let req = http::Request::delete("/users/u1").body(Body::empty()).unwrap();
        let (status, _) = send(DemoService::Users, req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn create_user_returns_201_with_a_new_id() {
        let req = http::Request::post("/users")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"name":"Barbara Liskov","email":"barbara@example.com"}"#,
            ))
            .unwrap();
        let (status, response) = send(DemoService::Users, req).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(response.headers()[header::LOCATION], "/users/u6");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["id"], "u6");
        assert_eq!(body["name"], "Barbara Liskov");

        let req = http::Request::post("/users")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"name":"No Email"}"#))
            .unwrap();
        let (status, response) = send(DemoService::Users, req).await;
        assert!(status.is_client_error());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(body["error"].is_string());
    }

    #[tokio::test]
    async fn orders_filter_by_user() {
        let (_, all) = get_json(DemoService::Orders, "/orders").await;
        assert_eq!(all.as_array().unwrap().len(), 8);
        let (status, body) = get_json(DemoService::Orders, "/orders?userId=u1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&body), ["o1", "o2"]);
        assert_eq!(body[0]["items"][0], json!({ "productId": "p1", "quantity": 1 }));
        let (_, body) = get_json(DemoService::Orders, "/orders?userId=u9").await;
        assert_eq!(body, json!([]));
    }

    #[tokio::test]
    async fn products_by_ids_follow_requested_order() {
        let (status, body) = get_json(DemoService::Catalog, "/products?ids=p3,p1,p9").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&body), ["p3", "p1"]);

        let (_, body) = get_json(DemoService::Catalog, "/products?ids=p5&ids=p2,p4&ids=p5").await;
        assert_eq!(ids(&body), ["p5", "p2", "p4"]);

        let (_, body) = get_json(DemoService::Catalog, "/products?ids=").await;
        assert_eq!(body, json!([]));

        let (_, body) = get_json(DemoService::Catalog, "/products").await;
        assert_eq!(ids(&body), ["p1", "p2", "p3", "p4", "p5", "p6"]);
        assert_eq!(body[0]["priceCents"], 8999);
        assert_eq!(body[0]["inStock"], true);
    }

    #[tokio::test]
    async fn fail_knob_injects_the_status() {
        let (status, body) = get_json(DemoService::Users, "/users/u1?fail=503").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({ "error": "injected failure", "status": 503 }));

        let (status, _) = get_json(DemoService::Catalog, "/no/such/path?fail=429").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

        let (status, _) = get_json(DemoService::Orders, "/health?fail_rate=1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = get_json(DemoService::Orders, "/health?fail_rate=0").await;
        assert_eq!(status, StatusCode::OK);

        for bad in ["fail=200", "fail=abc", "fail_rate=1.5", "delay_ms=-1"] {
            let (status, body) = get_json(DemoService::Users, &format!("/health?{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(body["error"].is_string(), "{bad}");
        }
    }

    #[tokio::test]
    async fn delay_knob_delays_then_fails() {
        let started = Instant::now();
        let (status, body) = get_json(DemoService::Users, "/health?delay_ms=60").await;
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "status": "ok", "service": "users" }));

        let started = Instant::now();
        let (status, _) = get_json(DemoService::Orders, "/orders?delay_ms=30&fail=502").await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn echo_reports_request() {
        let req = http::Request::put("/echo/a/b?x=1&y=2")
            .header("x-test", "one")
            .header("x-test", "two")
            .body(Body::from("hello"))
            .unwrap();
        let (status, response) = send(DemoService::Orders, req).await;
        assert_eq!(status, StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["service"], "orders");
        assert_eq!(body["method"], "PUT");
        assert_eq!(body["path"], "/echo/a/b");
        assert_eq!(body["query"], "x=1&y=2");
        assert_eq!(body["headers"]["x-test"], json!(["one", "two"]));
        assert_eq!(body["body_bytes"], 5);
        assert_eq!(body["body"], "hello");

        let (_, body) = get_json(DemoService::Users, "/echo").await;
        assert_eq!(body["query"], Value::Null);
        assert_eq!(body["body_bytes"], 0);
        assert_eq!(body["body"], "");
    }

    #[tokio::test]
    async fn echo_streams_large_bodies_without_returning_them() {
        // Several chunks, 1 MiB in all: well past the 64 KiB kept.
        let chunks = futures_util::stream::iter(
            (0..16).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'a'; 64 * 1024]))),
        );
        let req = http::Request::post("/echo")
            .body(Body::from_stream(chunks))
            .unwrap();
        let (_, response) = send(DemoService::Catalog, req).await;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["body_bytes"], 1024 * 1024);
        assert_eq!(body["body"], Value::Null);
    }

    #[tokio::test]
    async fn upload_counts_bytes() {
        let req = http::Request::post("/upload")
            .body(Body::from(vec![0_u8; 200_000]))
            .unwrap();
        let (status, response) = send(DemoService::Users, req).await;
        assert_eq!(status, StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body, json!({ "bytes": 200_000 }));
    }

    #[tokio::test]
    async fn bytes_serves_exact_size() {
        let req = http::Request::get("/bytes?size=150000")
            .body(Body::empty())
            .unwrap();
        let (status, response) = send(DemoService::Catalog, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "150000");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 150_000);
        assert!(bytes.iter().all(|&b| b == b'x'));

        let (status, _) = get_json(DemoService::Catalog, "/bytes?size=lots").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn spawned_backend_serves_over_tcp() {
        let backend = spawn(DemoService::Catalog, loopback()).await.unwrap();
        assert!(backend.url().starts_with("http://127.0.0.1:"));
        let health = fetch_json(&format!("{}/health", backend.url())).await;
        assert_eq!(health, json!({ "status": "ok", "service": "catalog" }));

        let response = reqwest::get(format!("{}/bytes?size=300000", backend.url()))
            .await
            .unwrap();
        assert_eq!(response.content_length(), Some(300_000));
        assert_eq!(response.bytes().await.unwrap().len(), 300_000);
    }

    #[tokio::test]
    async fn events_arrive_one_chunk_at_a_time() {
        let backend = spawn(DemoService::Users, loopback()).await.unwrap();
        let started = Instant::now();
        let mut response = reqwest::get(format!("{}/events?n=3&interval_ms=100", backend.url()))
            .await
            .unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
        // The first chunk holds only the first event: it was sent before the rest existed.
        let first = response.chunk().await.unwrap().unwrap();
        assert_eq!(&first[..], b"data: {\"seq\":0}\n\n");
        let mut rest = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            rest.extend_from_slice(&chunk);
        }
        assert_eq!(rest, b"data: {\"seq\":1}\n\ndata: {\"seq\":2}\n\n");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn spawn_all_starts_every_service_and_drop_stops_them() {
        let backends = spawn_all().await.unwrap();
        let services: Vec<_> = backends.iter().map(|b| b.service).collect();
        assert_eq!(services, DemoService::ALL);
        for backend in &backends {
            let health = fetch_json(&format!("{}/health", backend.url())).await;
            assert_eq!(health["service"], backend.service.name());
        }
        let addr = backends[0].addr;
        drop(backends);
        // Give the aborted accept task a moment to be torn down and release the port.
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "{addr} still accepting after drop");
    }
}
