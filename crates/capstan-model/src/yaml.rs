//! YAML to JSON values with a map from each field path to its line, and JSON values back to YAML.
//!
//! Parsing goes through yaml-rust2's event parser so that every error can name a line, anchors and aliases
//! are expanded under a budget (a "YAML bomb" fails instead of eating memory), and duplicate keys are
//! errors rather than silent overwrites.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::yaml::{Hash, Yaml};
use yaml_rust2::YamlEmitter;

/// The most nodes one document may expand to, aliases included.
pub const MAX_NODES: usize = 1_000_000;

/// A line and column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One YAML document as a JSON value, with where each field path starts.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    /// Where the document starts (its first node).
    pub start: Location,
    spans: HashMap<String, Location>,
}

impl Document {
    /// The location of `path` (`spec.ports[0].name`), or of its nearest ancestor that has one.
    pub fn locate(&self, path: &str) -> Location {
        let mut p = path.to_string();
        loop {
            if let Some(loc) = self.spans.get(&p) {
                return *loc;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return self.spans.get("").copied().unwrap_or(self.start),
            }
        }
    }

    /// Whether the document has a node at exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.spans.contains_key(path)
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("line {}, column {}: {message}", location.line, location.column)]
pub struct YamlError {
    pub location: Location,
    pub message: String,
}

enum Frame {
    Map { map: Map<String, Value>, key: Option<String>, path: String, anchor: usize },
    Seq { items: Vec<Value>, path: String, anchor: usize },
}

struct Builder {
    docs: Vec<Document>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, usize)>,
    spans: HashMap<String, Location>,
    start: Option<Location>,
    nodes: usize,
    error: Option<YamlError>,
}

fn loc(m: &Marker) -> Location {
    Location { line: m.line(), column: m.col() + 1 }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_nodes).sum::<usize>(),
        Value::Object(o) => 1 + o.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

/// Resolves a plain scalar with YAML 1.2 core schema rules.
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "-.inf" | ".nan" | ".NaN" | ".NAN" => return Value::String(s.to_string()),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Number(i.into());
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Number(i.into());
        }
    }
    let looks_numeric = s.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

impl Builder {
    fn fail(&mut self, mark: &Marker, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(YamlError { location: loc(mark), message: message.into() });
        }
    }

    /// The path the next node gets, given the frame it goes into.
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { key, path, .. }) => child_path(path, key.as_deref().unwrap_or("")),
            Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn add_nodes(&mut self, n: usize, mark: &Marker) -> bool {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            self.fail(
                mark,
                format!("the document expands to more than {MAX_NODES} nodes (too many aliases?); refusing it"),
            );
            return false;
        }
        true
    }

    /// Places a finished node into its parent, or finishes the document.
    fn push_value(&mut self, value: Value, anchor: usize) {
        if anchor > 0 {
            let n = count_nodes(&value);
            self.anchors.insert(anchor, (value.clone(), n));
        }
        match self.stack.last_mut() {
            None => {
                let spans = std::mem::take(&mut self.spans);
                let start = self.start.take().unwrap_or(Location { line: 1, column: 1 });
                self.docs.push(Document { value, start, spans });
                self.anchors.clear();
                self.nodes = 0;
            }
            Some(Frame::Map { map, key, .. }) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                }
                None => unreachable!("keys are handled before values"),
            },
            Some(Frame::Seq { items, .. }) => items.push(value),
        }
    }

    fn on_key(&mut self, key: String, mark: &Marker) {
        let (dup, path) = match self.stack.last() {
            Some(Frame::Map { map, path, .. }) => (map.contains_key(&key), child_path(path, &key)),
            _ => (false, String::new()),
        };
        if dup {
            self.fail(mark, format!("duplicate key `{key}`; each key may appear once in a mapping"));
            return;
        }
        self.spans.insert(path, loc(mark));
        if let Some(Frame::Map { key: k, .. }) = self.stack.last_mut() {
            *k = Some(key);
        }
    }
}

fn tag_is_str(tag: &Option<Tag>) -> bool {
    matches!(tag, Some(t) if t.suffix == "str" || t.suffix == "tag:yaml.org,2002:str")
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                if self.expecting_key() {
                    self.on_key(text, &mark);
                    return;
                }
                if !self.add_nodes(1, &mark) {
                    return;
                }
                let path = self.next_path();
                self.spans.entry(path).or_insert(loc(&mark));
                if self.stack.is_empty() {
                    self.start = Some(loc(&mark));
                }
                let value = if style == TScalarStyle::Plain && !tag_is_str(&tag) {
                    resolve_plain(&text)
                } else {
                    Value::String(text)
                };
                self.push_value(value, anchor);
            }
            Event::Alias(id) => {
                if self.expecting_key() {
                    self.fail(&mark, "an alias cannot be used as a mapping key");
                    return;
                }
                let Some((value, n)) = self.anchors.get(&id).cloned() else {
                    self.fail(&mark, "alias to an unknown anchor");
                    return;
                };
                if !self.add_nodes(n, &mark) {
                    return;
                }
                let path = self.next_path();
                self.spans.entry(path).or_insert(loc(&mark));
                self.push_value(value, 0);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) if self.expecting_key() => {
                self.fail(&mark, "a mapping key must be a plain value, not a mapping or a list");
            }
            Event::MappingStart(anchor, _) => {
                if !self.add_nodes(1, &mark) {
                    return;
                }
                let path = self.next_path();
                if self.stack.is_empty() {
                    self.start = Some(loc(&mark));
                }
                self.spans.entry(path.clone()).or_insert(loc(&mark));
                self.stack.push(Frame::Map { map: Map::new(), key: None, path, anchor });
            }
            Event::SequenceStart(anchor, _) => {
                if !self.add_nodes(1, &mark) {
                    return;
                }
                let path = self.next_path();
                if self.stack.is_empty() {
                    self.start = Some(loc(&mark));
                }
                self.spans.entry(path.clone()).or_insert(loc(&mark));
                self.stack.push(Frame::Seq { items: Vec::new(), path, anchor });
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { map, anchor, .. }) = self.stack.pop() {
                    self.push_value(Value::Object(map), anchor);
                }
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() {
                    self.push_value(Value::Array(items), anchor);
                }
            }
            Event::DocumentStart => {
                self.spans.clear();
                self.start = None;
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// Parses every document of a YAML stream. Empty documents (only comments) are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut builder = Builder {
        docs: Vec::new(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        spans: HashMap::new(),
        start: None,
        nodes: 0,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(YamlError { location: loc(e.marker()), message: e.info().to_string() });
    }
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder.docs.into_iter().filter(|d| !d.value.is_null()).collect())
}

fn to_yaml(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        Value::Object(o) => {
            let mut h = Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

/// Renders a JSON value as one YAML document starting with `---`.
pub fn to_yaml_string(v: &Value) -> String {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // Writing into a String cannot fail.
    let _ = emitter.dump(&to_yaml(v));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_with_locations() {
        let docs = parse_documents("a: 1\nb:\n  c: [x, \"2\"]\n  d: 2.5\n---\n# empty\n---\ne: ~\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value, json!({"a": 1, "b": {"c": ["x", "2"], "d": 2.5}}));
        assert_eq!(docs[0].locate("b.c").line, 3);
        assert_eq!(docs[0].locate("b.d").line, 4);
        assert_eq!(docs[0].locate("b.c[1]").line, 3);
        assert_eq!(docs[0].locate("b.missing.deeper").line, 2);
        assert_eq!(docs[1].value, json!({"e": null}));
        assert_eq!(docs[1].locate("e").line, 8);
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let docs = parse_documents("a: true\nb: '1'\nc: 0x1f\nd: -3\ne: 1e3\nf: 1.2.3\ng: !!str 5\n").unwrap();
        assert_eq!(docs[0].value, json!({"a": true, "b": "1", "c": 31, "d": -3, "e": 1000.0, "f": "1.2.3", "g": "5"}));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse_documents("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.location.line, 3);
        assert!(e.message.contains("duplicate key `a`"));
    }

    #[test]
    fn syntax_errors_have_lines() {
        let e = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.location.line >= 2, "{e}");
    }

    #[test]
    fn aliases_expand_and_bombs_are_refused() {
        let docs = parse_documents("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(docs[0].value["other"], json!({"x": 1}));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", [prev.as_str(); 10].join(", ")));
        }
        let e = parse_documents(&bomb).unwrap_err();
        assert!(e.message.contains("more than"), "{e}");
    }

    #[test]
    fn round_trips_through_yaml() {
        let v = json!({"apiVersion": "x/v1", "spec": {"list": [1, "two", {"k": null}], "f": 1.5, "t": true, "s": "multi\nline"}});
        let text = to_yaml_string(&v);
        let back = parse_documents(&text).unwrap();
        assert_eq!(back[0].value, v);
    }
}
