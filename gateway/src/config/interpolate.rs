//! `${VAR}` and `${VAR:-default}` in string values, so secrets and addresses come from the
//! environment. `$${` writes a literal `${`.
//!
//! The environment is passed in (not read globally) so tests and `gateway demo` can supply their own.

/// Looks up an environment variable; `std::env::var` in production.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Expands every `${...}` in `input`, or says what is wrong with the first bad one.
pub fn interpolate(input: &str, env: Env<'_>) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in \"{input}\": close it with `}}`"))?;
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{expr}}}` is not a valid variable reference: use `${{NAME}}` or `${{NAME:-default}}` with letters, digits and `_`"
                ));
            }
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set: set it, or give a default with `${{{name}:-value}}`"
                    ));
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cr3t".to_owned())
    }

    #[test]
    fn expands_set_and_defaulted_variables() {
        assert_eq!(interpolate("a-${SECRET}-b", &env).unwrap(), "a-s3cr3t-b");
        assert_eq!(interpolate("${MISSING:-http://x:1}", &env).unwrap(), "http://x:1");
        assert_eq!(interpolate("${SECRET:-unused}", &env).unwrap(), "s3cr3t");
        assert_eq!(interpolate("${MISSING:-}", &env).unwrap(), "");
        assert_eq!(
            interpolate("cost $5 and $${LITERAL}", &env).unwrap(),
            "cost $5 and ${LITERAL}"
        );
    }

    #[test]
    fn reports_unset_unterminated_and_malformed() {
        assert!(
            interpolate("${MISSING}", &env)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(
            interpolate("${SECRET", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            interpolate("${}", &env)
                .unwrap_err()
                .contains("not a valid variable")
        );
        assert!(
            interpolate("${A B}", &env)
                .unwrap_err()
                .contains("not a valid variable")
        );
    }
}
