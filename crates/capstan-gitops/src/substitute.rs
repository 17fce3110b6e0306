//! Variable substitution in manifest text: `${VAR}`, `${VAR:=default}`, and `$${VAR}` for a literal `${VAR}`.

use std::collections::BTreeMap;

use capstan_model::yaml::Location;

/// A variable that has no value and no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstituteError {
    pub location: Location,
    pub message: String,
    pub hint: String,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces variables line by line, so line numbers stay true. Text that is not a well-formed variable is kept.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, SubstituteError> {
    let mut out = String::with_capacity(text.len());
    for (ln, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            let escaped = i > 0 && rest.as_bytes()[i - 1] == b'$';
            let Some(close) = rest[i..].find('}') else { break };
            let inner = &rest[i + 2..i + close];
            let (name, default) = match inner.split_once(":=") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !is_name(name) {
                out.push_str(&rest[..i + 2]);
                rest = &rest[i + 2..];
                continue;
            }
            if escaped {
                out.push_str(&rest[..i - 1]);
                out.push_str(&rest[i..i + close + 1]);
            } else {
                out.push_str(&rest[..i]);
                match (vars.get(name), default) {
                    (Some(v), _) => out.push_str(v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        return Err(SubstituteError {
                            location: Location { line: ln + 1, column: line.len() - rest.len() + i + 1 },
                            message: format!("variable `{name}` has no value"),
                            hint: format!(
                                "add `{name}` to spec.substitute, give a default as `${{{name}:=value}}`, or write `$${{{name}}}` for the literal text"
                            ),
                        })
                    }
                }
            }
            rest = &rest[i + close + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_defaults_escapes_and_errors() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(substitute("x: ${A}\ny: ${B:=two}\n", &vars).unwrap(), "x: 1\ny: two\n");
        assert_eq!(substitute("z: $${A} ${not a var} $HOME\n", &vars).unwrap(), "z: ${A} ${not a var} $HOME\n");
        let e = substitute("a: 1\nb: [${A}, ${MISSING}]\n", &vars).unwrap_err();
        assert_eq!(e.location, Location { line: 2, column: 11 });
        assert!(e.message.contains("MISSING"));
    }
}
