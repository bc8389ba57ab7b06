//! JWT bearer tokens, verified with jsonwebtoken.
//!
//! Every key is pinned to ONE algorithm (from the config, or the JWK's `alg`/key type); a token
//! whose header names another algorithm is refused before any signature check, which closes
//! `alg: none` and HS256-with-the-RSA-public-key confusion. `jku`, `x5u` and embedded `jwk`
//! headers are ignored (keys only ever come from config and the configured JWKS); a `crit` header
//! is refused (RFC 7515 §4.1.11: we understand no extensions).
//!
//! Verified tokens are cached (bounded, never past the token's `exp` + leeway) so a client
//! reusing its token pays the signature check once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::identity::Identity;
use super::jwks::{Jwks, KeySet};
use crate::config::JwtConfig;
use crate::error::{AuthFailure, GatewayError};

/// Tokens longer than this are refused unread (real ones are well under 4 KiB).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Verified-token cache size, in bytes of token text (about 16k typical tokens).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The claim checks every key applies.
#[derive(Debug)]
pub struct Policy {
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
}

impl Policy {
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut v = Validation::new(algorithm);
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        // Required and of the right type: a missing or non-string `iss` fails like a wrong one.
        let mut required = vec!["exp", "iss"];
        v.set_issuer(&self.issuers);
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// A key and the one algorithm it verifies.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    /// The JWK it came from, to tell whether a refreshed JWKS changed it.
    pub jwk: Option<Jwk>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    pub fn new(
        kid: Option<String>,
        algorithm: Algorithm,
        key: DecodingKey,
        policy: &Policy,
        jwk: Option<Jwk>,
    ) -> Self {
        Self {
            kid,
            algorithm,
            key,
            validation: policy.validation(algorithm),
            jwk,
        }
    }
}

/// A verified token in the cache.
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    key: Arc<VerifyKey>,
    /// `exp` + leeway, in seconds since the epoch: the entry is useless afterwards.
    valid_until: u64,
}

#[derive(Debug)]
pub struct JwtVerifier {
    policy: Arc<Policy>,
    static_keys: Vec<Arc<VerifyKey>>,
    pub jwks: Option<Arc<Jwks>>,
    cache: Cache<Box<str>, Verified>,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("subject", &self.identity.subject)
            .finish()
    }
}

struct UntilExp;

impl moka::Expiry<Box<str>, Verified> for UntilExp {
    fn expire_after_create(&self, _: &Box<str>, value: &Verified, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(value.valid_until.saturating_sub(now_secs())))
    }
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<Self, crate::upstream::BuildError> {
        let policy = Arc::new(Policy {
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway,
        });
        let static_keys = config
            .keys
            .iter()
            .map(|k| {
                Arc::new(VerifyKey::new(
                    k.kid.clone(),
                    k.algorithm,
                    k.key.clone(),
                    &policy,
                    None,
                ))
            })
            .collect();
        let jwks = match &config.jwks {
            Some(jwks) => Some(Arc::new(Jwks::new(jwks.clone(), policy.clone())?)),
            None => None,
        };
        let cache = Cache::builder()
            .max_capacity(CACHE_BYTES)
            .weigher(weight)
            .expire_after(UntilExp)
            .build();
        Ok(Self {
            policy,
            static_keys,
            jwks,
            cache,
        })
    }

    /// Verifies `token` (the text after `Bearer `) and returns who it belongs to.
    pub async fn verify(&self, token: &str, deadline: Instant) -> Result<Arc<Identity>, GatewayError> {
        let fail = |reason| GatewayError::Unauthenticated { reason };
        if token.len() > MAX_TOKEN_LEN {
            return Err(fail(AuthFailure::TooLarge));
        }
        if let Some(hit) = self.cache.get(token) {
            if now_secs() < hit.valid_until && self.key_is_current(&hit.key) {
                return Ok(hit.identity);
            }
            self.cache.invalidate(token);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| fail(failure(e.kind())))?;
        if header.crit.is_some() {
            return Err(fail(AuthFailure::Critical));
        }
        let key = self.find_key(header.kid.as_deref(), header.alg, deadline).await?;
        // The key's algorithm, never the token's: a mismatch is refused before anything else.
        if header.alg != key.algorithm {
            return Err(fail(AuthFailure::Algorithm));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| fail(failure(e.kind())))?;
        let claims = data.claims;
        let now = now_secs();
        let leeway = self.policy.leeway.as_secs();
        // jsonwebtoken checks exp and nbf; iat is ours: a number, and not in the future.
        match claims.get("iat") {
            None => {}
            Some(Value::Number(n)) if n.as_f64().is_none_or(|iat| iat > (now + leeway) as f64) => {
                return Err(fail(AuthFailure::IssuedInFuture));
            }
            Some(Value::Number(_)) => {}
            Some(_) => return Err(fail(AuthFailure::Claims)),
        }
        let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0) as u64;
        let identity = Arc::new(Identity::from_claims(claims).map_err(fail)?);
        self.cache.insert(
            token.into(),
            Verified {
                identity: identity.clone(),
                key,
                valid_until: exp.saturating_add(leeway),
            },
        );
        Ok(identity)
    }

    /// A cached verification stands only while its key is still configured or published.
    fn key_is_current(&self, key: &Arc<VerifyKey>) -> bool {
        self.static_keys.iter().any(|k| Arc::ptr_eq(k, key))
            || self
                .jwks
                .as_ref()
                .and_then(|j| j.keys())
                .is_some_and(|set| set.contains(key))
    }

    async fn find_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        deadline: Instant,
    ) -> Result<Arc<VerifyKey>, GatewayError> {
        let unknown = GatewayError::Unauthenticated {
            reason: AuthFailure::UnknownKey,
        };
        let static_key = self.static_keys.iter().find(|k| match kid {
            Some(kid) => k.kid.as_deref() == Some(kid),
            None => k.kid.is_none() && k.algorithm == alg,
        });
        if let Some(key) = static_key {
            return Ok(key.clone());
        }
        let Some(jwks) = &self.jwks else {
            return Err(unknown);
        };
        let lookup = |set: &Option<Arc<KeySet>>| set.as_ref().and_then(|s| s.get(kid).cloned());
        let current = jwks.keys();
        if let Some(key) = lookup(&current) {
            return Ok(key);
        }
        // Boxed: a fetch through the upstream layer is a large future, and this rare path
        // would make every authenticated request's future (moved a few times each) as large.
        let refreshed = Box::pin(jwks.refetch_for_unknown_kid(deadline)).await;
        match (lookup(&refreshed), refreshed) {
            (Some(key), _) => Ok(key),
            // Never loaded: the provider is down, the token may be fine.
            (None, None) => Err(GatewayError::AuthUnavailable),
            (None, Some(_)) => Err(unknown),
        }
    }
}

/// jsonwebtoken's error, in the plain words the client gets.
fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey => {
            AuthFailure::Signature
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            AuthFailure::Algorithm
        }
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::Issuer,
        ErrorKind::InvalidAudience => AuthFailure::Audience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::InvalidSubject => {
            AuthFailure::Claims
        }
        _ => AuthFailure::Malformed,
    }
}

/// A cached token's weight: its text plus the identity's rough size.
#[allow(clippy::borrowed_box)] // moka's weigher signature
fn weight(token: &Box<str>, _: &Verified) -> u32 {
    u32::try_from(token.len() + 256).unwrap_or(u32::MAX)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
