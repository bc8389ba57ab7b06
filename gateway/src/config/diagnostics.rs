//! Config errors that point at the exact place in the file: `routes.toml:12:9: error: ...`.
//!
//! Everything that reads config reports through [`Diagnostics`], so `gateway check`, startup and
//! (later) hot reload print errors the same way and all of them at once.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// A config file's name and text, kept so byte spans can be turned into line:column.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: Arc<str>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub fn location(&self, span: &Range<usize>) -> Location {
        let (line, column) = self.line_col(span.start);
        Location {
            file: self.name.clone(),
            line,
            column,
        }
    }
}

/// Where something was written in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem in a config file, with a plain sentence on what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.location, self.message)
    }
}

/// Every problem found in one pass over a config, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// In file order (then by position), without duplicates.
    pub fn sorted(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by(|a, b| {
            (&a.location.file, a.location.line, a.location.column).cmp(&(
                &b.location.file,
                b.location.line,
                b.location.column,
            ))
        });
        errors.dedup();
        Self(errors)
    }

    /// An error about a file as a whole (unreadable, say), located at its start.
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        let location = Location {
            file: file.to_owned(),
            line: 1,
            column: 1,
        };
        Self(vec![ConfigError {
            location,
            message: message.into(),
        }])
    }
}

/// Collects errors while a config is validated, so one run reports all of them.
#[derive(Debug)]
pub struct Diagnostics<'s> {
    source: &'s Source,
    errors: Vec<ConfigError>,
}

impl<'s> Diagnostics<'s> {
    pub fn new(source: &'s Source) -> Self {
        Self {
            source,
            errors: Vec::new(),
        }
    }

    pub fn source(&self) -> &'s Source {
        self.source
    }

    pub fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let location = self.source.location(span);
        self.errors.push(ConfigError {
            location,
            message: message.into(),
        });
    }

    pub fn error_at(&mut self, location: &Location, message: impl Into<String>) {
        self.errors.push(ConfigError {
            location: location.clone(),
            message: message.into(),
        });
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let src = Source::new("r.toml", "a = 1\nbé = \"x\"\n");
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(src.line_col(6 + 6), (2, 6));
    }
}
