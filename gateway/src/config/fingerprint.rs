//! What each section of a config file was, as written: a hot reload compares them to keep the
//! state of what did not change (a service's connection pool and breaker, a rate-limit policy's
//! counters, the JWKS keys) and to say what did.
//!
//! A section is compared as TOML data, not text, so comments and formatting do not count as
//! changes; `${VAR}` references are compared as written (a process's environment does not change).

use std::collections::BTreeMap;

/// Each section's TOML, by name: `server`, `auth`, `graphql`, `services.users`,
/// `rate_limits.default`, `routes.3`...
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fingerprints(BTreeMap<String, String>);

/// Section names only: the sections hold the file's secrets.
impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Fingerprints {
    /// The sections of a config file's text (empty when it is not TOML: such a file never
    /// validates anyway).
    pub fn of(text: &str) -> Self {
        let Ok(table) = text.parse::<toml::Table>() else {
            return Self::default();
        };
        let mut sections = BTreeMap::new();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("services" | "rate_limits", toml::Value::Table(named)) => {
                    for (name, section) in named {
                        sections.insert(format!("{key}.{name}"), section.to_string());
                    }
                }
                ("routes", toml::Value::Array(routes)) => {
                    for (i, route) in routes.iter().enumerate() {
                        sections.insert(format!("routes.{i}"), route.to_string());
                    }
                }
                _ => {
                    sections.insert(key.clone(), value.to_string());
                }
            }
        }
        Self(sections)
    }

    /// Adds a file that `section` points to (a key file): its digest becomes part of the section.
    pub fn add_file(&mut self, section: &str, path: &str, content: &[u8]) {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(content));
        let entry = self.0.entry(section.to_owned()).or_default();
        entry.push_str(&format!("\nfile {path} {digest}"));
    }

    /// Adds `other`'s entries to this one's sections.
    pub fn merge(&mut self, other: Fingerprints) {
        for (section, extra) in other.0 {
            self.0.entry(section).or_default().push_str(&extra);
        }
    }

    /// The section as written; `None` when the file does not have it.
    pub fn get(&self, section: &str) -> Option<&str> {
        self.0.get(section).map(String::as_str)
    }

    /// Whether `section` is the same (or absent) in both.
    pub fn same(&self, other: &Self, section: &str) -> bool {
        self.get(section) == other.get(section)
    }

    /// The sections whose names start with `prefix` (like "services."), by name.
    pub fn named<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(move |(k, v)| (&k[prefix.len()..], v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_and_comments_are_not_changes() {
        let a = Fingerprints::of(
            "[services.users]\nurls = [\"http://a\"] # the users\n[services.orders]\nurls = [\"http://b\"]\n",
        );
        let b = Fingerprints::of(
            "# edited\n[services.users]\nurls = [ \"http://a\" ]\n\n[services.orders]\nurls = [\"http://c\"]\n",
        );
        assert!(a.same(&b, "services.users"));
        assert!(!a.same(&b, "services.orders"));
        assert!(a.same(&b, "auth"), "absent in both");
        assert_eq!(
            a.named("services.").map(|(n, _)| n).collect::<Vec<_>>(),
            ["orders", "users"]
        );
    }
}
