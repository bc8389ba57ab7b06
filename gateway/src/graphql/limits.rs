//! Limits checked before anything runs: document size and tokens before parsing, aliases and
//! root fields after. Depth and complexity are async-graphql's own (set on the schema). A
//! rejected operation costs no backend call.

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// A limit an operation broke: the GraphQL error code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub code: &'static str,
    pub message: String,
}

/// Counts GraphQL lexical tokens (punctuators, names, numbers, strings), stopping past `max`:
/// a cheap bound on the parser's work for hostile documents.
pub fn check_tokens(query: &str, max: usize) -> Result<(), Exceeded> {
    let bytes = query.as_bytes();
    let mut i = 0;
    let mut tokens = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            0xEF if bytes[i..].starts_with(&[0xEF, 0xBB, 0xBF]) => i += 3,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                tokens += 1;
                if bytes[i..].starts_with(b"\"\"\"") {
                    i += 3;
                    while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 3;
                } else {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
            }
            b'.' if bytes[i..].starts_with(b"...") => {
                tokens += 1;
                i += 3;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => {
                tokens += 1;
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i], b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'+' | b'-')
                {
                    i += 1;
                }
            }
            _ => {
                tokens += 1;
                i += 1;
            }
        }
        if tokens > max {
            return Err(Exceeded {
                code: "QUERY_TOO_LARGE",
                message: format!("the document has more than {max} tokens"),
            });
        }
    }
    Ok(())
}

/// Aliases in the whole document, and root fields of each operation.
pub fn check_document(
    doc: &ExecutableDocument,
    max_aliases: usize,
    max_root_fields: usize,
) -> Result<(), Exceeded> {
    let mut aliases = 0;
    for (_, op) in doc.operations.iter() {
        aliases += count_aliases(&op.node.selection_set.node);
        let roots = root_fields(doc, &op.node.selection_set.node, 0);
        if roots > max_root_fields {
            return Err(Exceeded {
                code: "TOO_MANY_ROOT_FIELDS",
                message: format!("an operation selects {roots} root fields; the limit is {max_root_fields}"),
            });
        }
    }
    for fragment in doc.fragments.values() {
        aliases += count_aliases(&fragment.node.selection_set.node);
    }
    if aliases > max_aliases {
        return Err(Exceeded {
            code: "TOO_MANY_ALIASES",
            message: format!("the document has {aliases} aliases; the limit is {max_aliases}"),
        });
    }
    Ok(())
}

fn count_aliases(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(f) => {
                usize::from(f.node.alias.is_some()) + count_aliases(&f.node.selection_set.node)
            }
            Selection::InlineFragment(f) => count_aliases(&f.node.selection_set.node),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

/// Fields at the root, through fragments (bounded: fragment cycles are a validation error, but
/// this runs before validation).
fn root_fields(doc: &ExecutableDocument, set: &SelectionSet, depth: usize) -> usize {
    if depth > 8 {
        return 0;
    }
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(f) => root_fields(doc, &f.node.selection_set.node, depth + 1),
            Selection::FragmentSpread(s) => doc
                .fragments
                .get(&s.node.fragment_name.node)
                .map_or(0, |f| root_fields(doc, &f.node.selection_set.node, depth + 1)),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_counted_until_the_limit() {
        assert!(check_tokens("{ a b c }", 5).is_ok());
        assert!(check_tokens("{ a b c d e }", 5).is_err());
        assert!(check_tokens("# { a b c d e }\n{ a }", 3).is_ok());
        assert!(check_tokens(r#"{ a(x: "b c d e f") }"#, 8).is_ok());
        assert!(check_tokens(&"{a}".repeat(1000), 100).is_err());
    }

    #[test]
    fn aliases_and_root_fields() {
        let doc = async_graphql::parser::parse_query("{ a: x b: x ...F } fragment F on Query { c: x d: y }")
            .unwrap();
        assert!(check_document(&doc, 4, 10).is_ok());
        assert_eq!(check_document(&doc, 3, 10).unwrap_err().code, "TOO_MANY_ALIASES");
        assert_eq!(
            check_document(&doc, 10, 3).unwrap_err().code,
            "TOO_MANY_ROOT_FIELDS"
        );
    }
}
