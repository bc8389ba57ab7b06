//! `@http` templates: `"/users/{args.id}"`, `"{parent.productId}"`, `"{identity.sub}"`,
//! `"{identity.claims.tenant}"`. Parsed once when the schema is built; rendered per call against
//! the field's arguments, its parent's JSON and the caller's identity.

use std::fmt::Write as _;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::auth::Identity;

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded, so a
/// value can never add a path segment, a query parameter or a fragment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where a placeholder reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Args,
    Parent,
    Identity,
}

/// `{source.a.b}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub source: Source,
    pub path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is rendered against.
pub struct Scope<'a> {
    pub args: &'a Value,
    pub parent: &'a Value,
    pub identity: Option<&'a Identity>,
}

/// How a rendered value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Percent-encoded (path segments, query values).
    Url,
    /// As it is (headers, bodies).
    Raw,
}

impl Template {
    /// Parses `text`; the error says what is wrong in a plain sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unmatched `}}` in \"{text}\""));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in \"{text}\""))?;
            parts.push(Part::Var(Var::parse(&after[..close])?));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// The template is exactly one placeholder (so it can stand for a whole JSON value).
    pub fn single_var(&self) -> Option<&Var> {
        match self.parts.as_slice() {
            [Part::Var(v)] => Some(v),
            _ => None,
        }
    }

    pub fn uses(&self, source: Source) -> bool {
        self.vars().any(|v| v.source == source)
    }

    /// The rendered text; `None` when a placeholder has no value (absent or null), in which case
    /// there is nothing sensible to send.
    pub fn render(&self, scope: &Scope<'_>, encoding: Encoding) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    let text = text_of(v.lookup(scope)?)?;
                    match encoding {
                        Encoding::Url => {
                            let _ = write!(out, "{}", utf8_percent_encode(&text, COMPONENT));
                        }
                        Encoding::Raw => out.push_str(&text),
                    }
                }
            }
        }
        Some(out)
    }

    /// The template as a JSON value: a lone placeholder keeps its JSON type (an input object
    /// stays an object); anything else is text.
    pub fn render_json(&self, scope: &Scope<'_>) -> Option<Value> {
        match self.single_var() {
            Some(v) => v.lookup(scope).filter(|v| !v.is_null()).cloned(),
            None => self.render(scope, Encoding::Raw).map(Value::String),
        }
    }
}

/// Percent-encodes one query or path component.
pub fn encode_component(text: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(text, COMPONENT)
}

impl Var {
    fn parse(inner: &str) -> Result<Self, String> {
        let mut segments = inner.trim().split('.');
        let source = match segments.next() {
            Some("args") => Source::Args,
            Some("parent") => Source::Parent,
            Some("identity") => Source::Identity,
            _ => {
                return Err(format!(
                    "`{{{inner}}}` must start with args., parent. or identity."
                ));
            }
        };
        let path: Vec<String> = segments.map(str::to_owned).collect();
        if path.is_empty() || path.iter().any(String::is_empty) {
            return Err(format!("`{{{inner}}}` names no field: write it like {{args.id}}"));
        }
        if source == Source::Identity
            && !(path == ["sub"] || path == ["scopes"] || path.len() == 2 && path[0] == "claims")
        {
            return Err(format!(
                "`{{{inner}}}`: identity offers {{identity.sub}}, {{identity.scopes}} and {{identity.claims.NAME}}"
            ));
        }
        Ok(Self { source, path })
    }

    /// The value this placeholder stands for, if any.
    pub fn lookup<'s>(&self, scope: &Scope<'s>) -> Option<&'s Value> {
        match self.source {
            Source::Args => select(scope.args, &self.path),
            Source::Parent => select(scope.parent, &self.path),
            Source::Identity => {
                let identity = scope.identity?;
                match self.path[0].as_str() {
                    "claims" => identity.claims.get(&self.path[1]),
                    // `sub` and the scopes live in the claims too (an API key's as well).
                    "sub" => identity.claims.get("sub"),
                    _ => identity
                        .claims
                        .get("scope")
                        .or_else(|| identity.claims.get("scp")),
                }
            }
        }
    }
}

/// `value` at a dotted path (`"data.items"` or a split path); `None` when a step is missing.
pub fn select<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A value as text: strings as they are, numbers and booleans printed, lists comma-joined,
/// objects as JSON; `None` for null.
pub fn text_of(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().filter_map(text_of).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope<'a>(args: &'a Value, parent: &'a Value) -> Scope<'a> {
        Scope {
            args,
            parent,
            identity: None,
        }
    }

    #[test]
    fn renders_and_encodes() {
        let t = Template::parse("/users/{args.id}/x{parent.n}").unwrap();
        let args = json!({"id": "a/b c"});
        let parent = json!({"n": 3});
        assert_eq!(
            t.render(&scope(&args, &parent), Encoding::Url).unwrap(),
            "/users/a%2Fb%20c/x3"
        );
        assert_eq!(t.render(&scope(&json!({}), &parent), Encoding::Url), None);
    }

    #[test]
    fn lone_placeholders_keep_their_json_type() {
        let t = Template::parse("{args.input}").unwrap();
        let args = json!({"input": {"name": "x"}});
        assert_eq!(
            t.render_json(&scope(&args, &json!(null))).unwrap(),
            json!({"name": "x"})
        );
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("/{args.id").unwrap_err().contains("unclosed"));
        assert!(Template::parse("/x}").unwrap_err().contains("unmatched"));
        assert!(Template::parse("{user.id}").unwrap_err().contains("args."));
        assert!(Template::parse("{args.}").unwrap_err().contains("names no field"));
        assert!(
            Template::parse("{identity.email}")
                .unwrap_err()
                .contains("claims")
        );
    }
}
