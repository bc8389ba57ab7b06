//! Helpers for the GraphQL endpoint's end-to-end tests: a schema directory on disk, a GraphQL
//! POST, and backends that record every request that reaches them.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::send_in_time;

/// Writes `sdl` as `schema.graphql` into a fresh directory of its own, removed when the returned
/// guard drops.
pub fn schema_dir(sdl: &str) -> TempDir {
    let dir = super::temp_dir("graphql-test");
    std::fs::write(dir.path().join("schema.graphql"), sdl).unwrap();
    dir
}

/// The `[graphql]` table for a schema directory (as an absolute path in a TOML literal string),
/// with `extra` keys.
pub fn graphql_table(dir: &Path, extra: &str) -> String {
    format!(
        "\n[graphql]\nschema = {}\n{extra}\n",
        serde_json::to_string(dir.to_str().unwrap()).unwrap()
    )
}

/// POSTs `{"query", "variables"}` as `application/json` to `{base}/graphql`, accepting the
/// GraphQL-over-HTTP media type (so request errors are 400s). Returns the status, the headers and
/// the JSON body (`Value::Null` when the body is not JSON).
pub async fn post(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    variables: Value,
) -> (StatusCode, HeaderMap, Value) {
    post_with(
        client,
        base,
        &json!({"query": query, "variables": variables}),
        &[("accept", "application/graphql-response+json")],
    )
    .await
}

/// POSTs `body` as `application/json` to `{base}/graphql` with extra `headers`.
pub async fn post_with(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut request = client
        .post(format!("{base}/graphql"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(send_in_time(request).await).await
}

/// The status, headers and JSON body of a response (`Value::Null` when the body is not JSON).
pub async fn read(response: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

/// One request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The decoded values of query parameter `name`, in order.
    pub fn params(&self, name: &str) -> Vec<String> {
        let url = reqwest::Url::parse(&format!("http://x/?{}", self.query.as_deref().unwrap_or(""))).unwrap();
        url.query_pairs()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An HTTP backend that records every request (before answering it) and answers with `answer`.
#[derive(Clone)]
pub struct Backend {
    pub url: String,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    pub async fn start<F, Fut>(answer: F) -> Self
    where
        F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let app = Router::new().fallback(move |request: Request| {
            let (log, answer) = (log2.clone(), answer.clone());
            async move {
                let (parts, body) = request.into_parts();
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts.headers.clone(),
                    body: body.collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
                };
                log.lock().unwrap().push(seen.clone());
                answer(seen).await
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, log }
    }

    /// A backend that always answers 200 with `value`.
    pub async fn constant(value: Value) -> Self {
        Self::start(move |_| {
            let value = value.clone();
            async move { json_reply(200, &value) }
        })
        .await
    }

    pub fn hits(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

/// A JSON response.
pub fn json_reply(status: u16, value: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(value.to_string()))
        .unwrap()
}
