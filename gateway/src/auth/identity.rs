//! Who the caller is, once verified: attached to the request for the layers after authentication
//! (rate limiting keys on it, GraphQL resolvers read it) and forwarded upstream as headers.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::error::AuthFailure;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Jwt,
    ApiKey,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub` of a token (empty when the token has none), or an API key's id.
    pub subject: String,
    pub scopes: Vec<String>,
    /// Every claim of the token; for an API key `sub` and `scope`.
    pub claims: Map<String, Value>,
    pub kind: CredentialKind,
}

impl Identity {
    /// Builds an identity from verified JWT claims, rejecting standard claims of the wrong type.
    pub fn from_claims(claims: Map<String, Value>) -> Result<Self, AuthFailure> {
        let subject = match claims.get("sub") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(AuthFailure::Claims),
        };
        let mut scopes = Vec::new();
        match claims.get("scope") {
            None => {}
            Some(Value::String(s)) => scopes.extend(s.split_ascii_whitespace().map(str::to_owned)),
            Some(_) => return Err(AuthFailure::Claims),
        }
        // `scp` is an array in most providers and a space-separated string in Azure AD;
        // `scopes` is an array.
        for (name, string_ok) in [("scp", true), ("scopes", false)] {
            match claims.get(name) {
                None => {}
                Some(Value::String(s)) if string_ok => {
                    scopes.extend(s.split_ascii_whitespace().map(str::to_owned))
                }
                Some(Value::Array(items)) => {
                    for item in items {
                        let Value::String(s) = item else {
                            return Err(AuthFailure::Claims);
                        };
                        scopes.push(s.clone());
                    }
                }
                Some(_) => return Err(AuthFailure::Claims),
            }
        }
        scopes.sort();
        scopes.dedup();
        Ok(Self {
            subject,
            scopes,
            claims,
            kind: CredentialKind::Jwt,
        })
    }

    /// The identity of an API key client.
    pub fn api_key(id: &str, scopes: &[String]) -> Self {
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String(id.to_owned()));
        claims.insert("scope".into(), Value::String(scopes.join(" ")));
        Self {
            subject: id.to_owned(),
            scopes: scopes.to_vec(),
            claims,
            kind: CredentialKind::ApiKey,
        }
    }

    /// The `required` scopes this identity lacks.
    pub fn missing_scopes(&self, required: &[String]) -> Vec<String> {
        required
            .iter()
            .filter(|s| !self.scopes.contains(s))
            .cloned()
            .collect()
    }

    /// A claim as a header value: strings as they are, numbers and booleans as text, arrays of
    /// those joined by spaces (so `scp` reads like `scope`), objects as JSON. `None` when the claim
    /// is absent or cannot be a header value (control characters).
    pub fn claim_header(&self, claim: &str) -> Option<HeaderValue> {
        let text = match self.claims.get(claim)? {
            Value::Null => return None,
            Value::String(s) => s.clone(),
            Value::Array(items) => items.iter().map(scalar_text).collect::<Vec<_>>().join(" "),
            other => scalar_text(other),
        };
        HeaderValue::try_from(text).ok()
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Sets the configured identity headers on a request going upstream. The client's own headers
/// of those names are gone by then (`Authenticator::prepare_upstream` removes them whatever the
/// route's auth), so they can never be spoofed; a claim the identity lacks sets nothing.
pub fn forward_identity(headers: &mut HeaderMap, forward: &[(HeaderName, String)], identity: &Identity) {
    for (header, claim) in forward {
        if let Some(value) = identity.claim_header(claim) {
            headers.insert(header.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_from_scope_scp_and_scopes() {
        let id = Identity::from_claims(claims(
            json!({"sub": "u1", "scope": "a b", "scp": ["c"], "scopes": ["d", "a"]}),
        ))
        .unwrap();
        assert_eq!(id.scopes, ["a", "b", "c", "d"]);
        assert_eq!(id.missing_scopes(&["a".into(), "z".into()]), ["z"]);
        let azure = Identity::from_claims(claims(json!({"scp": "x y"}))).unwrap();
        assert_eq!(azure.scopes, ["x", "y"]);
    }

    #[test]
    fn claims_of_the_wrong_type_are_rejected() {
        for bad in [
            json!({"sub": 7}),
            json!({"scope": ["a"]}),
            json!({"scopes": "a"}),
            json!({"scp": [1]}),
        ] {
            assert_eq!(Identity::from_claims(claims(bad)), Err(AuthFailure::Claims));
        }
    }

    #[test]
    fn forwarded_headers_replace_the_clients() {
        let id = Identity::from_claims(claims(json!({"sub": "u1", "scp": ["a", "b"], "n": 3}))).unwrap();
        let forward = vec![
            (HeaderName::from_static("x-user-id"), "sub".to_owned()),
            (HeaderName::from_static("x-user-scopes"), "scp".to_owned()),
            (HeaderName::from_static("x-n"), "n".to_owned()),
            (HeaderName::from_static("x-absent"), "nope".to_owned()),
        ];
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "admin".parse().unwrap());
        forward_identity(&mut h, &forward, &id);
        assert_eq!(h["x-user-id"], "u1");
        assert_eq!(h["x-user-scopes"], "a b");
        assert_eq!(h["x-n"], "3");
        assert!(!h.contains_key("x-absent"));
    }
}
