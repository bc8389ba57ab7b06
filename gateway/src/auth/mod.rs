//! Authentication and authorization: who is calling, and may they use this route.
//!
//! Per route `auth`: "required" (default) needs valid credentials, "optional" verifies them when
//! present (bad credentials are still a 401, never a silent downgrade to anonymous), "none" does
//! not look at them. Route `scopes` must all be held (403 otherwise).
//!
//! Credentials: a bearer JWT in `Authorization` ([`jwt`]), or an API key in `x-api-key` (stored
//! hashed; looked up by SHA-256). One credential per request: two `Authorization` headers, or a
//! token and an API key together, are refused rather than guessed between.
//!
//! `jwt` verifies tokens, `jwks` keeps the provider's keys, `identity` is the result and what is
//! forwarded upstream.

pub mod identity;
pub mod jwks;
pub mod jwt;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use identity::{CredentialKind, Identity};

use crate::config::{AuthConfig, AuthMode, RouteConfig};
use crate::edge::headers::remove_present;
use crate::error::{AuthFailure, GatewayError};
use jwt::JwtVerifier;

/// Everything a snapshot needs to authenticate requests.
#[derive(Debug)]
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    /// API key identities by the SHA-256 of the key.
    api_keys: HashMap<[u8; 32], Arc<Identity>>,
    api_key_header: HeaderName,
    forward: Vec<(HeaderName, String)>,
    /// What no client may send on to a backend: the identity headers (only the gateway sets
    /// them), the API key header, and `Authorization` when `forward_authorization = false`.
    strip: Vec<HeaderName>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, crate::upstream::BuildError> {
        Ok(Self {
            jwt: config.jwt.as_ref().map(JwtVerifier::new).transpose()?,
            api_keys: config
                .api_keys
                .iter()
                .map(|k| (k.sha256, Arc::new(Identity::api_key(&k.id, &k.scopes))))
                .collect(),
            api_key_header: config.api_key_header.clone(),
            forward: config.forward.clone(),
            strip: config
                .forward
                .iter()
                .map(|(name, _)| name.clone())
                .chain([config.api_key_header.clone()])
                .chain((!config.forward_authorization).then_some(AUTHORIZATION))
                .collect(),
        })
    }

    /// Starts background work (JWKS refresh) for as long as this authenticator lives.
    pub fn start(&self) {
        if let Some(jwks) = self.jwt.as_ref().and_then(|j| j.jwks.as_ref()) {
            jwks.start_refresh();
        }
    }

    /// Applies `route`'s policy: the caller's identity (`None` for anonymous callers on routes that
    /// allow them), or the 401/403/503 to answer with.
    pub async fn authenticate(
        &self,
        route: &RouteConfig,
        headers: &HeaderMap,
        deadline: Instant,
    ) -> Result<Option<Arc<Identity>>, GatewayError> {
        if route.auth == AuthMode::None {
            return Ok(None);
        }
        let identity = self.identify(headers, deadline).await?;
        let Some(identity) = identity else {
            return match route.auth {
                AuthMode::Optional if route.scopes.is_empty() => Ok(None),
                _ => Err(GatewayError::Unauthenticated {
                    reason: AuthFailure::Missing,
                }),
            };
        };
        let missing = identity.missing_scopes(&route.scopes);
        if !missing.is_empty() {
            return Err(GatewayError::Forbidden { missing });
        }
        Ok(Some(identity))
    }

    async fn identify(
        &self,
        headers: &HeaderMap,
        deadline: Instant,
    ) -> Result<Option<Arc<Identity>>, GatewayError> {
        let fail = |reason| Err(GatewayError::Unauthenticated { reason });
        let mut authorization = headers.get_all(AUTHORIZATION).iter();
        let bearer = authorization.next();
        let mut api_key = headers.get_all(&self.api_key_header).iter();
        let key = api_key.next();
        if authorization.next().is_some() || api_key.next().is_some() || (bearer.is_some() && key.is_some()) {
            return fail(AuthFailure::Ambiguous);
        }
        if let Some(key) = key {
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            return match self.api_keys.get(&digest) {
                Some(identity) => Ok(Some(identity.clone())),
                None => fail(AuthFailure::ApiKey),
            };
        }
        let Some(bearer) = bearer else { return Ok(None) };
        let Some(token) = bearer_token(bearer.as_bytes()) else {
            return fail(AuthFailure::NotBearer);
        };
        let Some(jwt) = &self.jwt else {
            // No JWT provider: a token cannot be checked, so it is not accepted.
            return fail(AuthFailure::UnknownKey);
        };
        jwt.verify(token, deadline).await.map(Some)
    }

    /// Prepares a request's headers for the upstream: the client's copies of the identity headers
    /// and its API key go, the verified identity's headers are set, and `Authorization` stays
    /// unless `forward_authorization = false`.
    pub fn prepare_upstream(&self, headers: &mut HeaderMap, identity: Option<&Identity>) {
        remove_present(headers, &self.strip);
        if let Some(identity) = identity {
            identity::forward_identity(headers, &self.forward, identity);
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token(b"bearer   abc"), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
    }
}
