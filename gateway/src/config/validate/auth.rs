//! `[auth]`: JWT settings and keys, API keys, and the claims forwarded upstream.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use http::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_spanned::Spanned;
use url::Url;

use super::Validator;
use crate::config::model::{ApiKeyConfig, AuthConfig, JwksConfig, JwtConfig, StaticKey};
use crate::config::raw::{RawApiKey, RawAuth, RawJwt, RawJwtKey, Str};

/// Headers the gateway owns or that carry framing/credentials: never set from claims.
const RESERVED_FORWARD: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    "cookie",
    "x-request-id",
    "x-forwarded-for",
    "te",
];

impl Validator<'_, '_, '_> {
    pub(super) fn auth_section(&mut self, raw: Option<Spanned<RawAuth>>) -> AuthConfig {
        let mut auth = AuthConfig::default();
        let Some(raw) = raw else { return auth };
        let raw = raw.into_inner();
        if let Some(value) = &raw.api_key_header
            && let Some(name) = self.header_name(value, "api_key_header")
        {
            auth.api_key_header = name;
        }
        auth.forward_authorization = raw.forward_authorization.as_ref().is_none_or(|b| *b.get_ref());
        let mut forward = raw.forward;
        if let Some(jwt) = raw.jwt {
            let mut jwt = jwt.into_inner();
            for (header, claim) in std::mem::take(&mut jwt.forward) {
                if let Some((first, _)) = forward.get_key_value(&header) {
                    let first = self.diag.source().location(&first.span());
                    self.diag.error(
                        &header.span(),
                        format!(
                            "forward header \"{}\" is also set at {first}: keep one",
                            header.get_ref()
                        ),
                    );
                } else {
                    forward.insert(header, claim);
                }
            }
            auth.jwt = self.jwt(jwt);
        }
        auth.forward = self.forward(forward);
        auth.api_keys = self.api_keys(raw.api_keys);
        auth
    }

    fn header_name(&mut self, value: &Str, key: &str) -> Option<HeaderName> {
        let text = self.string(value)?;
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                self.diag.error(
                    &value.span(),
                    format!("`{key}` = \"{text}\" is not a header name: use letters, digits and `-`"),
                );
                None
            }
        }
    }

    fn forward(&mut self, raw: BTreeMap<Str, Str>) -> Vec<(HeaderName, String)> {
        let mut out = Vec::new();
        for (header, claim) in raw {
            let Some(name) = self.header_name(&header, "forward") else {
                continue;
            };
            if RESERVED_FORWARD.contains(&name.as_str()) || name.as_str().starts_with("proxy-") {
                self.diag.error(
                    &header.span(),
                    format!(
                        "\"{name}\" cannot be set from a claim: pick a header of your own, like \"x-user-id\""
                    ),
                );
                continue;
            }
            let Some(claim) = self.string(&claim) else {
                continue;
            };
            if claim.is_empty() {
                self.diag.error(&header.span(), "the claim name is empty");
                continue;
            }
            out.push((name, claim));
        }
        out
    }

    fn jwt(&mut self, raw: RawJwt) -> Option<JwtConfig> {
        if raw.issuers.get_ref().is_empty() {
            self.diag.error(
                &raw.issuers.span(),
                "`issuers` is empty: list the `iss` values you trust, like [\"https://id.example.com\"]",
            );
        }
        let issuers = raw
            .issuers
            .get_ref()
            .iter()
            .filter_map(|i| self.string(i))
            .collect();
        let audiences = raw
            .audiences
            .iter()
            .flatten()
            .filter_map(|a| self.string(a))
            .collect();
        let leeway = self.duration(&raw.leeway, "leeway", JwtConfig::DEFAULT_LEEWAY);
        let refresh = self.duration(&raw.jwks_refresh, "jwks_refresh", JwksConfig::DEFAULT_REFRESH);
        let cooldown = self.duration(&raw.jwks_cooldown, "jwks_cooldown", JwksConfig::DEFAULT_COOLDOWN);
        let jwks = match &raw.jwks_url {
            Some(value) => {
                let url = self.jwks_url(value)?;
                Some(JwksConfig {
                    url,
                    refresh,
                    cooldown,
                })
            }
            None => None,
        };
        let no_keys = raw.keys.is_empty() && raw.jwks_url.is_none();
        let keys = self.static_keys(raw.keys);
        if no_keys {
            self.diag.error(
                &raw.issuers.span(),
                "[auth.jwt] has no keys: set `jwks_url` or add [[auth.jwt.keys]]",
            );
        }
        Some(JwtConfig {
            issuers,
            audiences,
            leeway,
            jwks,
            keys,
        })
    }

    fn jwks_url(&mut self, value: &Str) -> Option<Url> {
        let text = self.string(value)?;
        match Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
            _ => {
                self.diag.error(
                    &value.span(),
                    format!("`jwks_url` = \"{text}\" is not an http(s) URL"),
                );
                None
            }
        }
    }

    fn static_keys(&mut self, raw: Vec<Spanned<RawJwtKey>>) -> Vec<StaticKey> {
        let mut keys: Vec<StaticKey> = Vec::new();
        let mut seen = HashSet::new();
        for entry in raw {
            let span = entry.span();
            let entry = entry.into_inner();
            let Some(key) = self.static_key(&entry, &span) else {
                continue;
            };
            // One key per kid, and one kid-less key per algorithm: lookups must be unambiguous.
            let slot = (key.kid.clone(), key.kid.is_none().then_some(key.algorithm));
            if !seen.insert(slot) {
                let what = match &key.kid {
                    Some(kid) => format!("kid \"{kid}\""),
                    None => format!("a key without `kid` for {:?}", key.algorithm),
                };
                self.diag.error(&span, format!("{what} is defined twice"));
                continue;
            }
            keys.push(key);
        }
        keys
    }

    fn static_key(&mut self, raw: &RawJwtKey, span: &std::ops::Range<usize>) -> Option<StaticKey> {
        let kid = raw.kid.as_ref().and_then(|k| self.string(k));
        let alg_text = self.string(&raw.algorithm)?;
        let Some(algorithm) = parse_algorithm(&alg_text) else {
            self.diag.error(
                &raw.algorithm.span(),
                format!(
                    "`algorithm` = \"{alg_text}\" is not supported: use HS256, HS384, HS512, RS256, RS384, RS512, \
                     PS256, PS384, PS512, ES256, ES384 or EdDSA"
                ),
            );
            return None;
        };
        let hmac = matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let key = match (hmac, &raw.secret, &raw.public_key_pem) {
            (true, Some(secret), None) => {
                let text = self.string(secret)?;
                if text.len() < 32 {
                    self.diag.error(
                        &secret.span(),
                        format!(
                            "an {alg_text} secret must be at least 32 bytes (this one has {}): a short secret can be brute-forced from any token",
                            text.len()
                        ),
                    );
                    return None;
                }
                DecodingKey::from_secret(text.as_bytes())
            }
            (false, None, Some(pem)) => {
                let text = self.string(pem)?;
                let bytes = if text.trim_start().starts_with("-----BEGIN") {
                    text.into_bytes()
                } else {
                    let dir = Path::new(&self.diag.source().name)
                        .parent()
                        .unwrap_or(Path::new(""));
                    match std::fs::read(dir.join(&text)) {
                        Ok(bytes) => {
                            self.fingerprints.add_file("auth", &text, &bytes);
                            bytes
                        }
                        Err(e) => {
                            self.diag
                                .error(&pem.span(), format!("cannot read the PEM file \"{text}\": {e}"));
                            return None;
                        }
                    }
                };
                let parsed = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&bytes),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&bytes),
                    _ => DecodingKey::from_rsa_pem(&bytes),
                };
                match parsed {
                    Ok(key) => key,
                    Err(e) => {
                        self.diag.error(
                            &pem.span(),
                            format!("`public_key_pem` is not a {alg_text} public key in PEM form: {e}"),
                        );
                        return None;
                    }
                }
            }
            (true, _, _) => {
                self.diag.error(
                    span,
                    format!("an {alg_text} key needs `secret` (and no `public_key_pem`)"),
                );
                return None;
            }
            (false, _, _) => {
                self.diag.error(
                    span,
                    format!("an {alg_text} key needs `public_key_pem` (and no `secret`)"),
                );
                return None;
            }
        };
        Some(StaticKey { kid, algorithm, key })
    }

    fn api_keys(&mut self, raw: Vec<Spanned<RawApiKey>>) -> Vec<ApiKeyConfig> {
        let mut out: Vec<ApiKeyConfig> = Vec::new();
        for entry in raw {
            let entry = entry.into_inner();
            let Some(id) = self.string(&entry.id) else {
                continue;
            };
            if id.is_empty() {
                self.diag
                    .error(&entry.id.span(), "an API key's `id` must not be empty");
                continue;
            }
            if out.iter().any(|k| k.id == id) {
                self.diag
                    .error(&entry.id.span(), format!("API key id \"{id}\" is defined twice"));
                continue;
            }
            let Some(hash) = self.string(&entry.sha256) else {
                continue;
            };
            let mut sha256 = [0u8; 32];
            if hex::decode_to_slice(hash.trim(), &mut sha256).is_err() {
                self.diag.error(
                    &entry.sha256.span(),
                    "`sha256` must be 64 hex digits: the SHA-256 of the key, from `printf %s \"$KEY\" | sha256sum`",
                );
                continue;
            }
            if out.iter().any(|k| k.sha256 == sha256) {
                self.diag.error(
                    &entry.sha256.span(),
                    "this key hash is already used by another API key",
                );
                continue;
            }
            let scopes = entry.scopes.iter().filter_map(|s| self.string(s)).collect();
            out.push(ApiKeyConfig { id, sha256, scopes });
        }
        out
    }
}

/// The algorithms a key can be pinned to (all that jsonwebtoken verifies).
pub fn parse_algorithm(text: &str) -> Option<Algorithm> {
    Algorithm::from_str(text).ok()
}
