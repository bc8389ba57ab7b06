//! The gateway's own schema directives, `@http`, `@auth` and `@from`: their declarations (what
//! `gateway schema` prints for editors) and the checked form of their arguments.

use std::time::Duration;

use async_graphql::Value as ConstValue;
use async_graphql::parser::Pos;
use async_graphql::parser::types::ConstDirective;
use http::{HeaderName, Method};
use serde_json::Value;

use super::template::{Source, Template, Var};

/// The declarations of the gateway's directives. Schema files may use the directives without
/// declaring them; a file that declares them must declare them exactly like this.
pub const DECLARATIONS: &str = r#""""
One backend call through the gateway's upstream layer. `path`, `query` values, `body` and
`headers` values are templates reading {args.x}, {parent.x}, {identity.sub} and
{identity.claims.x}; values are URL-encoded in the path and query.
"""
directive @http(
  "A [services.NAME] of routes.toml."
  service: String!
  method: String = "GET"
  "Appended to the service's URL."
  path: String = ""
  "Query parameters: name → template."
  query: GatewayMap
  "The request body: a lone {args.x} sends that argument as JSON."
  body: String
  "Request headers: name → template (`_` in a name is sent as `-`: x_tenant is x-tenant)."
  headers: GatewayMap
  "The part of the JSON response to use, like \"data.items\"."
  select: String
  "Collects this field's calls of sibling parents into one call (DataLoader)."
  batch: GatewayBatch
  "How long a response is reused, like \"30s\"."
  cache: String
  "This call's timeout, like \"300ms\" (within the request's deadline)."
  timeout: String
  "On failure: \"stale\" (the last cached value) or a JSON literal like \"[]\"."
  fallback: String
  "Send the caller's identity headers (and key the cache per caller)."
  forward_identity: Boolean = true
) on FIELD_DEFINITION

"Fields (or every field returning the type) that need an authenticated caller with these scopes."
directive @auth(scopes: [String!]! = []) on FIELD_DEFINITION | OBJECT

"Reads the parent's JSON under another key (a dotted path) than the field's name."
directive @from(key: String!) on FIELD_DEFINITION

"A JSON object of strings."
scalar GatewayMap

input GatewayBatch {
  "The field of each returned item that matches it to its parent."
  key: String!
  "Joins the batched values in one query parameter; null repeats the parameter instead."
  separator: String = ","
}
"#;

/// Names the declarations above define; a schema file may repeat them identically.
pub const DECLARED_NAMES: [&str; 5] = ["http", "auth", "from", "GatewayMap", "GatewayBatch"];

/// A directive problem and where it is.
pub type DirectiveError = (Pos, String);

/// `@http`, checked.
#[derive(Debug)]
pub struct HttpCall {
    pub service: String,
    pub method: Method,
    pub path: Template,
    pub query: Vec<(String, Template)>,
    pub body: Option<Template>,
    pub headers: Vec<(HeaderName, Template)>,
    pub select: Vec<String>,
    pub batch: Option<Batch>,
    pub cache: Option<Duration>,
    pub timeout: Option<Duration>,
    pub fallback: Fallback,
    pub forward_identity: bool,
}

/// `batch: {key:, separator:}`: which query parameter collects the parents' values, and how
/// returned items find their parent.
#[derive(Debug)]
pub struct Batch {
    pub param: String,
    pub parent: Var,
    pub key: Vec<String>,
    pub separator: Option<String>,
}

/// What a failed call resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    /// null and a GraphQL error.
    None,
    /// The last cached response, even expired (within `stale_grace`).
    Stale,
    /// This value.
    Value(Value),
}

impl Fallback {
    /// How `extensions.degraded` names it.
    pub fn name(&self) -> &'static str {
        match self {
            Fallback::None => "none",
            Fallback::Stale => "stale",
            Fallback::Value(_) => "literal",
        }
    }
}

/// Reads `@http`'s arguments; `services` are the config's service names.
pub fn http(
    directive: &ConstDirective,
    pos: Pos,
    services: &[&str],
) -> Result<HttpCall, Vec<DirectiveError>> {
    let mut errors = Vec::new();
    let mut call = HttpCall {
        service: String::new(),
        method: Method::GET,
        path: Template::parse("").unwrap_or_else(|_| unreachable!()),
        query: Vec::new(),
        body: None,
        headers: Vec::new(),
        select: Vec::new(),
        batch: None,
        cache: None,
        timeout: None,
        fallback: Fallback::None,
        forward_identity: true,
    };
    let mut batch = None;
    let mut has_service = false;
    for (name, value) in &directive.arguments {
        let at = value.pos;
        let mut fail = |message: String| errors.push((at, format!("@http `{}`: {message}", name.node)));
        match name.node.as_str() {
            "service" => match string(&value.node) {
                Some(s) if services.contains(&s) => {
                    has_service = true;
                    call.service = s.to_owned();
                }
                Some(s) => fail(format!(
                    "there is no [services.{s}] in the config (known: {})",
                    services.join(", ")
                )),
                None => fail("must be a string".into()),
            },
            "method" => match string(&value.node).map(|m| m.parse::<Method>()) {
                Some(Ok(m)) if m.as_str().bytes().all(|b| b.is_ascii_uppercase()) => call.method = m,
                _ => fail("must be an upper-case HTTP method like \"GET\" or \"POST\"".into()),
            },
            "path" => match string(&value.node).map(Template::parse) {
                Some(Ok(t)) => call.path = t,
                Some(Err(e)) => fail(e),
                None => fail("must be a string".into()),
            },
            "query" => match templates(&value.node) {
                Ok(pairs) => call.query = pairs,
                Err(e) => fail(e),
            },
            "headers" => match templates(&value.node) {
                Ok(pairs) => {
                    for (header, template) in pairs {
                        // GraphQL names cannot hold `-`: `x_tenant` is the header x-tenant.
                        match header.replace('_', "-").parse::<HeaderName>() {
                            Ok(h) => call.headers.push((h, template)),
                            Err(_) => fail(format!("\"{header}\" is not a header name")),
                        }
                    }
                }
                Err(e) => fail(e),
            },
            "body" => match string(&value.node).map(Template::parse) {
                Some(Ok(t)) => call.body = Some(t),
                Some(Err(e)) => fail(e),
                None => fail("must be a string".into()),
            },
            "select" => match string(&value.node) {
                Some(s) if !s.is_empty() && s.split('.').all(|p| !p.is_empty()) => {
                    call.select = s.split('.').map(str::to_owned).collect()
                }
                _ => fail("must be a dotted path like \"data.items\"".into()),
            },
            "batch" => batch = Some((at, &value.node)),
            "cache" => match string(&value.node).map(duration) {
                Some(Ok(d)) => call.cache = Some(d),
                Some(Err(e)) => fail(e),
                None => fail("must be a duration string like \"30s\"".into()),
            },
            "timeout" => match string(&value.node).map(duration) {
                Some(Ok(d)) => call.timeout = Some(d),
                Some(Err(e)) => fail(e),
                None => fail("must be a duration string like \"300ms\"".into()),
            },
            "fallback" => match string(&value.node) {
                Some("stale") => call.fallback = Fallback::Stale,
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(v) => call.fallback = Fallback::Value(v),
                    Err(_) => fail(format!(
                        "\"{text}\" is neither \"stale\" nor a JSON value (write a string as \"\\\"text\\\"\")"
                    )),
                },
                None => fail("must be a string".into()),
            },
            "forward_identity" => match &value.node {
                ConstValue::Boolean(b) => call.forward_identity = *b,
                _ => fail("must be true or false".into()),
            },
            other => errors.push((
                name.pos,
                format!("@http has no argument `{other}` (see `gateway schema`)"),
            )),
        }
    }
    if !has_service && !errors.iter().any(|(_, m)| m.starts_with("@http `service`")) {
        errors.push((pos, "@http needs `service`".into()));
    }
    if let Some((at, value)) = batch {
        match batch_of(value, &call) {
            Ok(b) => call.batch = Some(b),
            Err(e) => errors.push((at, format!("@http `batch`: {e}"))),
        }
    }
    if call.body.is_some() && call.method == Method::GET {
        errors.push((pos, "@http: a GET call has no `body`; set `method`".into()));
    }
    if errors.is_empty() { Ok(call) } else { Err(errors) }
}

fn batch_of(value: &ConstValue, call: &HttpCall) -> Result<Batch, String> {
    let ConstValue::Object(fields) = value else {
        return Err("write it like {key: \"id\"}".into());
    };
    let mut key = None;
    let mut separator = Some(",".to_owned());
    for (name, v) in fields {
        match (name.as_str(), v) {
            ("key", ConstValue::String(k)) if !k.is_empty() => {
                key = Some(k.split('.').map(str::to_owned).collect())
            }
            ("separator", ConstValue::String(s)) if !s.is_empty() => separator = Some(s.clone()),
            ("separator", ConstValue::Null) => separator = None,
            (other, _) => {
                return Err(format!(
                    "`{other}` must be a non-empty string (or null for separator)"
                ));
            }
        }
    }
    let key = key.ok_or("needs `key`, the item field that matches a parent")?;
    if call.path.uses(Source::Parent) || call.body.is_some() {
        return Err("the batched value must come from a query parameter; the path cannot read {parent.*} and there is no body".into());
    }
    let mut params = call.query.iter().filter(|(_, t)| t.uses(Source::Parent));
    let (param, template) = params
        .next()
        .ok_or("one `query` parameter must be a {parent.*} placeholder")?;
    if params.next().is_some() {
        return Err("only one `query` parameter may read {parent.*}".into());
    }
    let parent = template
        .single_var()
        .cloned()
        .ok_or_else(|| format!("query `{param}` must be exactly one {{parent.*}} placeholder"))?;
    Ok(Batch {
        param: param.clone(),
        parent,
        key,
        separator,
    })
}

/// `@auth(scopes: [...])`.
pub fn auth(directive: &ConstDirective) -> Result<Vec<String>, DirectiveError> {
    let mut scopes = Vec::new();
    for (name, value) in &directive.arguments {
        match (name.node.as_str(), &value.node) {
            ("scopes", ConstValue::List(items)) => {
                for item in items {
                    match item {
                        ConstValue::String(s) if !s.is_empty() => scopes.push(s.clone()),
                        _ => return Err((value.pos, "@auth `scopes` must be a list of scope names".into())),
                    }
                }
            }
            ("scopes", ConstValue::String(s)) => scopes.push(s.clone()),
            ("scopes", _) => return Err((value.pos, "@auth `scopes` must be a list of scope names".into())),
            (other, _) => return Err((name.pos, format!("@auth has no argument `{other}`"))),
        }
    }
    Ok(scopes)
}

/// `@from(key: "first_name")`: the dotted path to read.
pub fn from(directive: &ConstDirective, pos: Pos) -> Result<Vec<String>, DirectiveError> {
    match directive.get_argument("key").map(|v| (&v.node, v.pos)) {
        Some((ConstValue::String(k), _)) if !k.is_empty() && k.split('.').all(|p| !p.is_empty()) => {
            Ok(k.split('.').map(str::to_owned).collect())
        }
        Some((_, at)) => Err((at, "@from `key` must be a field name or a dotted path".into())),
        None => Err((pos, "@from needs `key`".into())),
    }
}

fn string(value: &ConstValue) -> Option<&str> {
    match value {
        ConstValue::String(s) => Some(s),
        _ => None,
    }
}

fn templates(value: &ConstValue) -> Result<Vec<(String, Template)>, String> {
    let ConstValue::Object(fields) = value else {
        return Err("write it like {name: \"{args.x}\"}".into());
    };
    fields
        .iter()
        .map(|(name, v)| match v {
            ConstValue::String(s) => Template::parse(s).map(|t| (name.to_string(), t)),
            _ => Err(format!("`{name}` must be a string template")),
        })
        .collect()
}

fn duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text).map_err(|_| {
        format!("\"{text}\" is not a duration between 1ms and a year, like \"300ms\" or \"30s\"")
    })
}
