//! The admin API, on its own listener (`[admin] listen`), never on the public port:
//! `GET /admin/config` (the active config, secrets redacted), `GET /admin/status` (version, last
//! reload, services with instance health and breaker state), `POST /admin/reload`,
//! `POST /admin/check` (validate a posted routes.toml: its errors, or what it would change), and
//! `/healthz` (the process is up) and `/readyz` (a config is loaded and the gateway is not
//! draining). With `[admin] token`, every `/admin/*` request needs `Authorization: Bearer <token>`.
//! Every answer carries an `x-request-id` (the client's, or a new one), and errors are in the
//! SPEC.md format with that id, as on the public port.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header::AUTHORIZATION};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::config::{self, Source};
use crate::edge::request_id::{self, X_REQUEST_ID};
use crate::reload::{Changes, Reloader};
use crate::snapshot::Snapshot;
use crate::upstream::ServiceStatus;

/// The admin routes over `reloader` (and the gateway it reloads).
pub fn router(reloader: Arc<Reloader>) -> Router {
    let admin = Router::new()
        .route("/admin/config", get(active_config))
        .route("/admin/status", get(status))
        .route("/admin/reload", post(reload))
        .route("/admin/check", post(check))
        .route_layer(middleware::from_fn_with_state(reloader.clone(), require_token));
    // Metrics are recorded from here on (the recorder is process-wide).
    crate::telemetry::metrics::handle();
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(prometheus))
        .route("/readyz", get(ready))
        .merge(admin)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND", "no such admin endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "the admin endpoint does not take this method",
            )
        })
        .layer(middleware::from_fn(with_request_id))
        .with_state(reloader)
}

tokio::task_local! {
    /// The id of the admin request being answered, for its error body.
    static REQUEST_ID: HeaderValue;
}

/// Gives each admin request an id (the client's sane `x-request-id`, or a new one), visible to
/// [`error`] and returned in the answer's `x-request-id`.
async fn with_request_id(request: Request, next: Next) -> Response {
    let id = request_id::from_request(request.headers());
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    response.headers_mut().insert(&X_REQUEST_ID, id);
    response
}

/// Connections the admin listener keeps open at once.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin API on `listener` until the process ends, cutting off a client that does
/// not send its request head within the public listener's `header_read_timeout`.
pub fn spawn(listener: TcpListener, reloader: Arc<Reloader>) {
    let header_read_timeout = reloader.gateway().snapshot().config.server.header_read_timeout;
    let router = router(reloader);
    tokio::spawn(async move {
        let served =
            crate::server::serve_router(listener, router, header_read_timeout, MAX_CONNECTIONS).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the admin listener failed");
        }
    });
}

async fn require_token(State(reloader): State<Arc<Reloader>>, request: Request, next: Next) -> Response {
    let snapshot = reloader.gateway().snapshot();
    let expected = snapshot.config.admin.as_ref().and_then(|a| a.token.as_deref());
    if let Some(expected) = expected {
        let sent = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "the admin API needs its bearer token",
            );
        }
    }
    next.run(request).await
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let id = REQUEST_ID
        .try_with(|id| id.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = json!({"error": {"code": code, "message": message, "request_id": id}});
    (status, Json(body)).into_response()
}

/// Prometheus text format.
async fn prometheus(State(reloader): State<Arc<Reloader>>) -> Response {
    let snapshot = reloader.gateway().snapshot();
    let services: Vec<ServiceStatus> = snapshot.upstreams.iter().map(|u| u.status()).collect();
    let text = crate::telemetry::metrics::render(&services);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn ready(State(reloader): State<Arc<Reloader>>) -> Response {
    if reloader.gateway().is_draining() {
        error(StatusCode::SERVICE_UNAVAILABLE, "DRAINING", "shutting down")
    } else {
        Json(json!({"status": "ready", "version": reloader.status().version})).into_response()
    }
}

/// The active config file as JSON, with every secret replaced.
async fn active_config(State(reloader): State<Arc<Reloader>>) -> Response {
    let snapshot = reloader.gateway().snapshot();
    match snapshot.config.text.get().parse::<toml::Table>() {
        Ok(mut table) => {
            redact_table(&mut table);
            Json(json!({
                "file": reloader.path().display().to_string(),
                "version": reloader.status().version,
                "config": table,
            }))
            .into_response()
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the active config cannot be shown",
        ),
    }
}

/// Keys whose values are secrets wherever they appear.
const SECRET_KEYS: [&str; 5] = ["secret", "token", "password", "sha256", "private_key"];

fn redact_table(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        if SECRET_KEYS.contains(&key.as_str()) {
            *value = toml::Value::String("[redacted]".into());
        } else {
            redact(value);
        }
    }
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => redact_table(t),
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        // A password in a URL (redis://:PASSWORD@host) is a secret too.
        toml::Value::String(s) => {
            if let Ok(mut url) = url::Url::parse(s)
                && url.password().is_some()
                && url.set_password(Some("redacted")).is_ok()
            {
                *s = url.to_string();
            }
        }
        _ => {}
    }
}

async fn status(State(reloader): State<Arc<Reloader>>) -> Response {
    let snapshot = reloader.gateway().snapshot();
    let services: Vec<Value> = snapshot
        .upstreams
        .iter()
        .map(|u| service_json(&u.status()))
        .collect();
    Json(json!({
        "config": reloader.status(),
        "draining": reloader.gateway().is_draining(),
        "services": services,
        "routes": snapshot.config.routes.len(),
        "graphql": snapshot.config.graphql.as_ref().map(|g| g.path.clone()),
    }))
    .into_response()
}

fn service_json(s: &ServiceStatus) -> Value {
    json!({
        "name": s.name,
        "breaker": s.breaker.map(|b| format!("{b:?}").to_lowercase()),
        "in_flight": s.in_flight,
        "max_concurrent": s.max_concurrent,
        "instances": s.instances.iter().map(|i| json!({
            "url": i.url,
            "available": i.available,
            "health_check_ok": i.health_check_ok,
            "ejected": i.ejected,
            "in_flight": i.in_flight,
            "ejections": i.ejections,
        })).collect::<Vec<_>>(),
    })
}

async fn reload(State(reloader): State<Arc<Reloader>>) -> Response {
    match tokio::task::spawn_blocking(move || reloader.reload("admin")).await {
        Ok(attempt) => {
            let status = if attempt.result == "failed" {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            (status, Json(attempt)).into_response()
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the reload did not finish",
        ),
    }
}

/// Validates a posted routes.toml (relative paths resolve as for the active file) without
/// applying it: 422 with its errors, or 200 with what it would change.
async fn check(State(reloader): State<Arc<Reloader>>, _headers: HeaderMap, body: Bytes) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the body must be a UTF-8 routes.toml",
        );
    };
    let result = tokio::task::spawn_blocking(move || {
        let source = Source::new(reloader.path().display().to_string(), text);
        let built = config::parse(&source, &**reloader.env())
            .and_then(config::Checked::into_result)
            .and_then(Snapshot::build);
        let active = reloader.gateway().snapshot();
        built.map(|new| (Changes::between(&active, &new), crate::reload::version(&new)))
    })
    .await;
    match result {
        Ok(Ok((changes, version))) => Json(json!({"valid": true, "version": version, "changes": changes})).into_response(),
        Ok(Err(errors)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"valid": false, "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>()})),
        )
            .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "the check did not finish"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let mut table: toml::Table = r#"
[admin]
token = "admin-token-0123456789"
[[auth.jwt.keys]]
secret = "hs-secret"
[[auth.api_keys]]
id = "partner"
sha256 = "abcd"
[rate_limit_store]
url = "redis://:hunter2@127.0.0.1:6379/0"
[services.users]
urls = ["http://127.0.0.1:9101/users"]
"#
        .parse()
        .unwrap();
        redact_table(&mut table);
        let text = table.to_string();
        for secret in ["admin-token-0123456789", "hs-secret", "abcd", "hunter2"] {
            assert!(!text.contains(secret), "{secret} shows in {text}");
        }
        assert!(text.contains("http://127.0.0.1:9101/users"));
        assert!(text.contains("partner"));
    }
}
