//! The identity provider's JWKS: fetched through the upstream layer, kept as parsed keys, and
//! refreshed in the background.
//!
//! Failure modes it is built for:
//! - The endpoint is down at startup: the gateway starts anyway; tokens needing the JWKS get 503
//!   `AUTH_UNAVAILABLE` (not 401: they may well be valid) and the fetch is retried with backoff.
//! - The endpoint fails later: the last good key set keeps serving.
//! - A token names a `kid` we have not seen (key rotation): one refetch, at most once per
//!   `jwks_cooldown`, so a flood of random kids cannot become a flood of fetches. Requests that
//!   arrive while that refetch runs wait for it instead of failing.
//!
//! Keys that did not change across a refresh keep their `Arc`, so tokens cached as verified by
//! them stay cached; a removed key drops them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use super::jwt::{Policy, VerifyKey};
use crate::config::{JwksConfig, ServiceConfig};
use crate::snapshot::{StartOnce, spawn_background};
use crate::upstream::{Upstream, UpstreamRequest};

/// A JWKS larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The keys of one successful fetch.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
}

impl KeySet {
    pub fn get(&self, kid: Option<&str>) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            // A token without `kid` can only mean the provider's single key.
            None if self.by_kid.len() == 1 => self.by_kid.values().next(),
            None => None,
        }
    }

    pub fn contains(&self, key: &Arc<VerifyKey>) -> bool {
        key.kid
            .as_ref()
            .and_then(|kid| self.by_kid.get(kid))
            .is_some_and(|k| Arc::ptr_eq(k, key))
    }
}

#[derive(Debug)]
pub struct Jwks {
    config: JwksConfig,
    policy: Arc<Policy>,
    upstream: Upstream,
    /// `None` until the first successful fetch.
    keys: ArcSwapOption<KeySet>,
    /// When the last on-demand (unknown kid) refetch started.
    last_on_demand: Mutex<Option<Instant>>,
    /// Held for the duration of a fetch: one at a time, and waiters see its result.
    fetching: tokio::sync::Mutex<()>,
    started: StartOnce,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the JWKS endpoint answered {0}")]
    Status(http::StatusCode),
    #[error("the JWKS could not be fetched: {0}")]
    Upstream(#[from] crate::error::GatewayError),
    #[error("the JWKS body could not be read (over {MAX_JWKS_BYTES} bytes, or cut off)")]
    Body,
    #[error("the JWKS is not valid JSON with a `keys` array: {0}")]
    Json(serde_json::Error),
}

impl Jwks {
    pub fn new(config: JwksConfig, policy: Arc<Policy>) -> Result<Self, crate::upstream::BuildError> {
        // The JWKS is fetched through the same upstream layer as every backend call.
        let mut base = config.url.clone();
        base.set_query(None);
        base.set_fragment(None);
        // The refresh loop backs off by itself; a breaker would only delay recovery.
        let service = ServiceConfig {
            connect_timeout: Duration::from_secs(2),
            circuit_breaker: None,
            ..ServiceConfig::new("jwks", vec![base])
        };
        Ok(Self {
            upstream: Upstream::new(&service)?,
            config,
            policy,
            keys: ArcSwapOption::empty(),
            last_on_demand: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            started: StartOnce::default(),
        })
    }

    /// The current key set; `None` while no fetch has succeeded yet.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Starts the background refresh, which lives as long as this `Jwks` does.
    pub fn start_refresh(self: &Arc<Self>) {
        if self.started.first() {
            spawn_background(refresh_loop(Arc::downgrade(self)));
        }
    }

    /// Called for a `kid` the current set lacks: refetches unless one ran within the cooldown,
    /// and in any case waits for a fetch in flight. Returns the key set to look in again.
    pub async fn refetch_for_unknown_kid(&self, deadline: Instant) -> Option<Arc<KeySet>> {
        let start = {
            let mut last = self.last_on_demand.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.config.cooldown);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let wait = async {
            let _guard = self.fetching.lock().await;
            if start && let Err(e) = self.fetch_locked().await {
                tracing::warn!(url = %self.config.url, error = %e, "JWKS refetch for an unknown kid failed");
            }
        };
        // Never past the request's own deadline.
        let _ = tokio::time::timeout_at(deadline, wait).await;
        self.keys()
    }

    async fn fetch(&self) -> Result<(), FetchError> {
        let _guard = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<(), FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
        let request = UpstreamRequest {
            method: Method::GET,
            path: "",
            query: self.config.url.query(),
            as_given: None,
            set: &[],
            headers,
            body: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let response = self.upstream.send(request, deadline).await?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?
            .to_bytes();
        let doc: JwksDocument = serde_json::from_slice(&body).map_err(FetchError::Json)?;
        let previous = self.keys();
        let mut by_kid = HashMap::new();
        for raw in doc.keys {
            match self.key(raw, previous.as_deref()) {
                Ok(key) => {
                    if let Some(kid) = key.kid.clone() {
                        by_kid.insert(kid, key);
                    }
                }
                Err(why) => tracing::warn!(url = %self.config.url, "JWKS key skipped: {why}"),
            }
        }
        tracing::info!(url = %self.config.url, keys = by_kid.len(), "JWKS loaded");
        self.keys.store(Some(Arc::new(KeySet { by_kid })));
        Ok(())
    }

    /// One JWK as a verification key pinned to one algorithm, reusing the previous `Arc` when
    /// the JWK is unchanged.
    fn key(&self, raw: serde_json::Value, previous: Option<&KeySet>) -> Result<Arc<VerifyKey>, String> {
        let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("not a JWK we can use ({e})"))?;
        let Some(kid) = jwk.common.key_id.clone() else {
            return Err("it has no `kid`".into());
        };
        if let Some(old) = previous.and_then(|p| p.by_kid.get(&kid))
            && old.jwk.as_ref() == Some(&jwk)
        {
            return Ok(old.clone());
        }
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(format!("kid \"{kid}\" is an encryption key (`use` = \"enc\")"));
        }
        let algorithm =
            jwk_algorithm(&jwk).ok_or_else(|| format!("kid \"{kid}\" has no usable algorithm"))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("kid \"{kid}\": {e}"))?;
        if key.family() != algorithm.family() {
            return Err(format!("kid \"{kid}\": its `alg` does not match its key type"));
        }
        Ok(Arc::new(VerifyKey::new(
            Some(kid),
            algorithm,
            key,
            &self.policy,
            Some(jwk),
        )))
    }
}

#[derive(serde::Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// The one algorithm a JWK verifies: its `alg`, else the usual one for its key type. Symmetric
/// keys are never taken from a JWKS (a public URL is no place for a shared secret, and accepting
/// them would reopen algorithm confusion).
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let algorithm = match jwk.common.key_algorithm {
        Some(alg) => Algorithm::try_from(alg).ok()?,
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return None,
        },
    };
    (!matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)).then_some(algorithm)
}

/// Fetches at once, then every `refresh`; after a failure retries sooner (1 s, doubling, capped
/// at `refresh` and 30 s) so the gateway recovers quickly when the provider comes back.
async fn refresh_loop(jwks: Weak<Jwks>) {
    let mut failures: u32 = 0;
    loop {
        let Some(this) = jwks.upgrade() else { return };
        let refresh = this.config.refresh;
        let wait = match this.fetch().await {
            Ok(()) => {
                failures = 0;
                refresh
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_secs(1u64 << failures.min(5).saturating_sub(1));
                let wait = backoff.min(refresh).min(Duration::from_secs(30));
                tracing::warn!(url = %this.config.url, error = %e, retry_in = ?wait, "JWKS fetch failed; keeping the last good keys");
                wait
            }
        };
        drop(this);
        tokio::time::sleep(wait).await;
    }
}
