//! The GraphQL playground: the GraphiQL page served on a browser's `GET <path>` (`Accept:
//! text/html`, `playground = true`) and the static files of `playground_assets` served under
//! `<path>/assets/`.
//!
//! This module owns the page (GraphiQL 3's UMD build on React 18, from unpkg pinned to exact
//! versions with subresource integrity, or from a local `npm install` prefix), the escaping of
//! what the gateway embeds into it (the endpoint and the example query), the opt-in bearer token
//! (read in the browser from the page's `#token=...` fragment, never from the server), and the
//! safe lookup of an asset file: no escape from the assets directory, regular files only, a
//! content type from the extension.
//!
//! It does not route, authenticate or apply CSRF rules; the GraphQL endpoint does that.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use http::HeaderValue;
use percent_encoding::percent_decode_str;

/// The page, with `{{NAME}}` placeholders filled in by [`page`].
const TEMPLATE: &str = include_str!("playground.html");

/// The pinned versions: what npm resolves for `graphiql@3`, `react@18` and `react-dom@18` (and
/// what `tests/js/package-lock.json` installs for the local-assets tests).
const GRAPHIQL_VERSION: &str = "3.9.0";
const REACT_VERSION: &str = "18.3.1";
const REACT_DOM_VERSION: &str = "18.3.1";

/// One script or stylesheet of the page: its path inside an npm install prefix and, for the
/// CDN, its subresource-integrity hash (sha384 of the file in the pinned package).
struct Asset {
    package: &'static str,
    version: &'static str,
    file: &'static str,
    integrity: &'static str,
}

const GRAPHIQL_JS: Asset = Asset {
    package: "graphiql",
    version: GRAPHIQL_VERSION,
    file: "graphiql.min.js",
    integrity: "sha384-8NGfVj4CVlqHajlZj+bPJT4thxPMHMJYn7DWK2CvtopLd02E7qsPHazniBYvVjOO",
};
const GRAPHIQL_CSS: Asset = Asset {
    package: "graphiql",
    version: GRAPHIQL_VERSION,
    file: "graphiql.min.css",
    integrity: "sha384-QMux00XgRtwRLSYIY3kw2rj1ovk5AuuliAchk+HSQbqdbGFnz9GYuqIlOqxhwCE2",
};
const REACT_JS: Asset = Asset {
    package: "react",
    version: REACT_VERSION,
    file: "umd/react.production.min.js",
    integrity: "sha384-DGyLxAyjq0f9SPpVevD6IgztCFlnMF6oW/XQGmfe+IsZ8TqEiDrcHkMLKI6fiB/Z",
};
const REACT_DOM_JS: Asset = Asset {
    package: "react-dom",
    version: REACT_DOM_VERSION,
    file: "umd/react-dom.production.min.js",
    integrity: "sha384-gTGxhz21lVGYNMcdJOyq01Edg0jhn/c22nsx0kyqP0TxaV5WVdsSH1fSDUf5YJj1",
};

/// Where GraphiQL's scripts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assets<'a> {
    /// unpkg.com, pinned to exact versions, with subresource integrity.
    Cdn,
    /// The gateway itself: `{base}/node_modules/graphiql/graphiql.min.js` and so on, where
    /// `base` is the URL path the assets are served under, e.g. `"/graphql/assets"` (no
    /// trailing slash).
    Local { base: &'a str },
}

impl Assets<'_> {
    /// The URL of `asset` and the extra attributes of the tag that loads it.
    fn locate(&self, asset: &Asset) -> (String, String) {
        match self {
            Assets::Cdn => (
                format!(
                    "https://unpkg.com/{}@{}/{}",
                    asset.package, asset.version, asset.file
                ),
                format!(r#" integrity="{}" crossorigin="anonymous""#, asset.integrity),
            ),
            Assets::Local { base } => (
                format!(
                    "{}/node_modules/{}/{}",
                    base.trim_end_matches('/'),
                    asset.package,
                    asset.file
                ),
                String::new(),
            ),
        }
    }
}

/// The GraphiQL page for `endpoint` (e.g. "/graphql"), with `example_query` preloaded in the
/// editor.
///
/// The endpoint is resolved against the page's own URL in the browser, so a relative path works
/// behind any host name. Opening the page as `<endpoint>#token=XYZ` preloads the header
/// `{"Authorization": "Bearer XYZ"}`; headers are never persisted in the browser's storage.
pub fn page(endpoint: &str, assets: Assets<'_>, example_query: Option<&str>) -> String {
    let (css, css_attrs) = assets.locate(&GRAPHIQL_CSS);
    let (react, react_attrs) = assets.locate(&REACT_JS);
    let (react_dom, react_dom_attrs) = assets.locate(&REACT_DOM_JS);
    let (graphiql, graphiql_attrs) = assets.locate(&GRAPHIQL_JS);
    fill(TEMPLATE, |name| match name {
        "GRAPHIQL_CSS" => Some(html_attr(&css)),
        "CSS_ATTRS" => Some(css_attrs.clone()),
        "REACT_JS" => Some(html_attr(&react)),
        "REACT_ATTRS" => Some(react_attrs.clone()),
        "REACT_DOM_JS" => Some(html_attr(&react_dom)),
        "REACT_DOM_ATTRS" => Some(react_dom_attrs.clone()),
        "GRAPHIQL_JS" => Some(html_attr(&graphiql)),
        "GRAPHIQL_ATTRS" => Some(graphiql_attrs.clone()),
        "ENDPOINT_JSON" => Some(script_json(Some(endpoint))),
        "EXAMPLE_QUERY_JSON" => Some(script_json(example_query)),
        _ => None,
    })
}

/// `template` with every `{{NAME}}` replaced by `value(NAME)`, in one pass (a value that
/// happens to contain `{{...}}` is not expanded again). Unknown names are a bug in the template.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..]
            .find("}}")
            .map(|e| start + e)
            .expect("playground.html: unclosed {{");
        let name = &rest[start + 2..end];
        out.push_str(&rest[..start]);
        out.push_str(&value(name).unwrap_or_else(|| panic!("playground.html: unknown placeholder {name}")));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `text` as a double-quoted HTML attribute value's content.
fn html_attr(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` as a JavaScript expression safe inside an inline `<script>`: a JSON string (or
/// `null`) with `<`, `>`, `&` and U+2028/U+2029 as `\uXXXX` escapes, so neither `</script>` nor
/// `<!--` can end or change the script element, and no line separator can break the literal.
fn script_json(value: Option<&str>) -> String {
    let json = serde_json::to_string(&value).expect("a string serializes");
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A file under `dir` named by `rel` (the request path after "<endpoint>/assets/", still
/// percent-encoded): its content type and bytes; `None` when absent, not a regular file, or when
/// `rel` tries to leave `dir` (`..`, absolute, backslash, NUL, a symlink escaping `dir`).
///
/// Hidden names (a segment starting with `.`) are refused too: the assets directory is an npm
/// install prefix, and nothing GraphiQL needs lives in a dot-file, while `.env`-like files might.
pub async fn asset(dir: &Path, rel: &str) -> Option<(HeaderValue, Bytes)> {
    let rel = percent_decode_str(rel).decode_utf8().ok()?;
    let rel = safe_relative(&rel)?;
    // Symlinks may point anywhere: compare where the file really is with where `dir` really is.
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let file = tokio::fs::canonicalize(root.join(&rel)).await.ok()?;
    if !file.starts_with(&root) {
        return None;
    }
    if !tokio::fs::metadata(&file).await.ok()?.is_file() {
        return None;
    }
    let bytes = tokio::fs::read(&file).await.ok()?;
    Some((content_type(&file), Bytes::from(bytes)))
}

/// `rel` as a relative path of plain, non-hidden segments, or `None`.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains(['\\', '\0']) || rel.starts_with('/') {
        return None;
    }
    let mut path = PathBuf::new();
    for segment in rel.split('/') {
        // Empty segments (`a//b`, a trailing `/`) and `.`/`..` are refused along with dot-files.
        if segment.is_empty() || segment.starts_with('.') {
            return None;
        }
        let mut components = Path::new(segment).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(part)), None) => path.push(part),
            _ => return None,
        }
    }
    Some(path)
}

/// The content type of an asset, from its extension.
fn content_type(file: &Path) -> HeaderValue {
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    HeaderValue::from_static(match extension.as_deref() {
        Some("js" | "mjs" | "cjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        _ => "application/octet-stream",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory under the system temp dir, removed on drop.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("gateway-playground-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn the_page_embeds_the_endpoint_and_the_escaped_example_query() {
        let html = page(
            "/graphql",
            Assets::Cdn,
            Some("{ products { name } } # a & b <i>\u{2028}"),
        );
        assert!(html.contains(r#"var endpoint = "/graphql";"#), "{html}");
        assert!(
            html.contains(r#"var exampleQuery = "{ products { name } } # a \u0026 b \u003ci\u003e\u2028";"#),
            "{html}"
        );
        assert!(
            html.contains("GraphiQL.createFetcher({ url: new URL(endpoint, window.location.href).href })")
        );
        assert!(html.contains("shouldPersistHeaders: false"));
        assert!(html.contains("defaultHeaders: headers"));
        assert!(!html.contains("{{"), "a placeholder was left: {html}");
    }

    #[test]
    fn without_an_example_query_the_page_has_none() {
        let html = page("/graphql", Assets::Cdn, None);
        assert!(html.contains("var exampleQuery = null;"), "{html}");
    }

    #[test]
    fn a_closing_script_tag_in_the_query_cannot_end_the_script() {
        let query = "{ a } # </script><script>alert(1)</script><!--";
        let html = page("/graphql", Assets::Cdn, Some(query));
        assert_eq!(
            html.matches("</script>").count(),
            4,
            "only the page's own: {html}"
        );
        assert!(!html.contains("<!--"), "{html}");
        assert!(html.contains(r"\u003c/script\u003e\u003cscript\u003ealert(1)"));
        // And it is still the same string to JavaScript (which reads \u003c as <), i.e. JSON.
        let start = html.find("var exampleQuery = ").unwrap() + "var exampleQuery = ".len();
        let literal = &html[start..start + html[start..].find(";\n").unwrap()];
        assert_eq!(serde_json::from_str::<String>(literal).unwrap(), query);
    }

    #[test]
    fn the_endpoint_is_escaped_like_the_query() {
        let html = page("/g</script>\"", Assets::Cdn, None);
        assert!(
            html.contains(r#"var endpoint = "/g\u003c/script\u003e\"";"#),
            "{html}"
        );
    }

    #[test]
    fn the_token_comes_from_the_fragment_in_the_browser_not_from_the_server() {
        let html = page("/graphql", Assets::Cdn, None);
        assert!(html.contains(r#"new URLSearchParams(hash).get("token")"#));
        assert!(html.contains(r#"Authorization: "Bearer " + token"#));
        assert!(html.contains(r#"var headers = "";"#));
    }

    #[test]
    fn cdn_assets_are_pinned_to_exact_versions_with_integrity() {
        let html = page("/graphql", Assets::Cdn, None);
        for url in [
            "https://unpkg.com/graphiql@3.9.0/graphiql.min.js",
            "https://unpkg.com/graphiql@3.9.0/graphiql.min.css",
            "https://unpkg.com/react@18.3.1/umd/react.production.min.js",
            "https://unpkg.com/react-dom@18.3.1/umd/react-dom.production.min.js",
        ] {
            let at = html.find(url).unwrap_or_else(|| panic!("{url} missing: {html}"));
            let tag_end = at + html[at..].find('>').unwrap();
            let tag = &html[at..tag_end];
            assert!(tag.contains(r#" integrity="sha384-"#), "{tag}");
            assert!(tag.contains(r#" crossorigin="anonymous""#), "{tag}");
        }
        // React first, then ReactDOM, then GraphiQL (a UMD build needs its globals loaded).
        let react = html.find("/react@").unwrap();
        let react_dom = html.find("/react-dom@").unwrap();
        let graphiql = html.find("/graphiql@3.9.0/graphiql.min.js").unwrap();
        assert!(react < react_dom && react_dom < graphiql);
    }

    #[test]
    fn local_assets_are_served_from_the_base() {
        let html = page(
            "/graphql",
            Assets::Local {
                base: "/graphql/assets",
            },
            None,
        );
        for path in [
            r#"src="/graphql/assets/node_modules/graphiql/graphiql.min.js""#,
            r#"href="/graphql/assets/node_modules/graphiql/graphiql.min.css""#,
            r#"src="/graphql/assets/node_modules/react/umd/react.production.min.js""#,
            r#"src="/graphql/assets/node_modules/react-dom/umd/react-dom.production.min.js""#,
        ] {
            assert!(html.contains(path), "{path} missing: {html}");
        }
        assert!(!html.contains("unpkg.com"));
        assert!(!html.contains("integrity="));
        let odd = page("/g", Assets::Local { base: "/a\"b&" }, None);
        assert!(
            odd.contains(r#"src="/a&quot;b&amp;/node_modules/react/"#),
            "{odd}"
        );
    }

    /// The versions pinned here are the ones the local-assets tests install, so both kinds of
    /// page run the same GraphiQL.
    #[test]
    fn the_pinned_versions_match_the_test_install() {
        let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js/package-lock.json");
        let Ok(lock) = std::fs::read_to_string(&lock) else {
            return; // Not in the repository's workspace.
        };
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        for (package, version) in [
            ("graphiql", GRAPHIQL_VERSION),
            ("react", REACT_VERSION),
            ("react-dom", REACT_DOM_VERSION),
        ] {
            assert_eq!(
                lock["packages"][format!("node_modules/{package}")]["version"],
                version,
                "tests/js/package-lock.json and playground.rs pin different {package} versions"
            );
        }
    }

    #[tokio::test]
    async fn asset_serves_files_with_a_content_type() {
        let dir = temp_dir("serve");
        let root = dir.path();
        std::fs::create_dir_all(root.join("node_modules/graphiql")).unwrap();
        std::fs::write(root.join("node_modules/graphiql/graphiql.min.js"), "js();").unwrap();
        std::fs::write(root.join("node_modules/graphiql/graphiql.min.css"), "a{}").unwrap();
        std::fs::write(root.join("node_modules/graphiql/graphiql.min.js.map"), "{}").unwrap();
        std::fs::write(root.join("node_modules/graphiql/package.json"), "{}").unwrap();
        std::fs::write(root.join("node_modules/graphiql/LICENSE"), "MIT").unwrap();
        std::fs::write(root.join("with space.js"), "s();").unwrap();

        let (kind, body) = asset(root, "node_modules/graphiql/graphiql.min.js")
            .await
            .unwrap();
        assert_eq!(kind, "text/javascript; charset=utf-8");
        assert_eq!(body, "js();");
        let (kind, body) = asset(root, "node_modules/graphiql/graphiql.min.css")
            .await
            .unwrap();
        assert_eq!(kind, "text/css; charset=utf-8");
        assert_eq!(body, "a{}");
        let (kind, _) = asset(root, "node_modules/graphiql/graphiql.min.js.map")
            .await
            .unwrap();
        assert_eq!(kind, "application/json");
        let (kind, _) = asset(root, "node_modules/graphiql/package.json").await.unwrap();
        assert_eq!(kind, "application/json");
        let (kind, _) = asset(root, "node_modules/graphiql/LICENSE").await.unwrap();
        assert_eq!(kind, "application/octet-stream");
        // Percent-encoded names are decoded.
        let (_, body) = asset(root, "with%20space.js").await.unwrap();
        assert_eq!(body, "s();");
        let (_, body) = asset(root, "node_modules/graphiql/graphiql%2Emin.js")
            .await
            .unwrap();
        assert_eq!(body, "js();");
        // Absent files and directories are not served.
        assert!(asset(root, "node_modules/graphiql/missing.js").await.is_none());
        assert!(asset(root, "node_modules/graphiql").await.is_none());
        assert!(asset(root, "node_modules/graphiql/").await.is_none());
        assert!(asset(root, "").await.is_none());
    }

    #[tokio::test]
    async fn asset_refuses_to_leave_its_directory() {
        let outer = temp_dir("escape");
        let root = outer.path().join("assets");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(outer.path().join("secret.js"), "secret").unwrap();
        std::fs::write(root.join("sub/ok.js"), "ok").unwrap();
        std::fs::write(root.join(".env"), "KEY=1").unwrap();
        assert!(asset(&root, "sub/ok.js").await.is_some());

        let secret = outer.path().join("secret.js");
        let absolute = secret.to_str().unwrap().to_owned();
        for rel in [
            "../secret.js",
            "sub/../../secret.js",
            "sub/../ok.js", // even when it would stay inside: `..` is refused outright
            "%2e%2e/secret.js",
            "%2E%2E%2Fsecret.js",
            "sub%2f..%2f..%2fsecret.js",
            "..%5csecret.js",
            "sub\\..\\..\\secret.js",
            "sub/ok.js%00",
            "sub/ok.js\0",
            "./sub/ok.js",
            "sub//ok.js",
            "/etc/passwd",
            "%2fetc%2fpasswd",
            absolute.as_str(),
            &absolute[1..], // relative to dir, so it is simply absent
            ".env",
            "%ff.js", // not UTF-8 once decoded
        ] {
            assert!(asset(&root, rel).await.is_none(), "{rel:?} was served");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn asset_follows_symlinks_only_within_its_directory() {
        let outer = temp_dir("symlink");
        let root = outer.path().join("assets");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(outer.path().join("secret.js"), "secret").unwrap();
        std::fs::write(root.join("real/inside.js"), "inside").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.js"), root.join("leak.js")).unwrap();
        std::os::unix::fs::symlink(outer.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("alias")).unwrap();

        assert!(asset(&root, "leak.js").await.is_none());
        assert!(asset(&root, "up/secret.js").await.is_none());
        let (_, body) = asset(&root, "alias/inside.js").await.unwrap();
        assert_eq!(body, "inside");
    }
}
