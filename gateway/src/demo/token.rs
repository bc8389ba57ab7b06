//! A token for trying the demo: signed with the demo config's own HS* key, so it verifies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::config::JwtConfig;

/// A token for user `u1` with the demo's scopes and the "gold" rate-limit tier, valid for `ttl`; `None` when the config has no
/// HMAC key to sign with (a JWKS-only setup: tokens come from the identity provider).
pub fn mint(jwt: &JwtConfig, ttl: Duration) -> Option<String> {
    let key = jwt
        .keys
        .iter()
        .find(|k| k.algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac)?;
    let secret = key.key.try_get_as_bytes().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let mut claims = json!({
        "sub": "u1",
        "name": "Ada Lovelace",
        "scope": "users:read orders:read",
        "plan": "gold",
        "iss": jwt.issuers.first()?,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if let Some(aud) = jwt.audiences.first() {
        claims["aud"] = json!(aud);
    }
    let mut header = Header::new(key.algorithm);
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).ok()
}
