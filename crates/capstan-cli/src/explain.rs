//! `capstan explain KIND[.field]`: a kind's or a field's description and fields, read from the kind's JSON Schema,
//! as `kubectl explain` prints them.

use anyhow::Result;
use capstan_model::Kind;
use serde_json::Value;

use crate::{Failure, EXIT_OK};

/// Follows `$ref` and unwraps `Option`'s `anyOf [T, null]`, keeping the outer description.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(r) = node["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or("");
        let target = &root["$defs"][name];
        if !target.is_null() {
            return resolve(root, target);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(vs) = node[key].as_array() {
            let real: Vec<&Value> = vs.iter().filter(|v| v["type"] != "null").collect();
            if real.len() == 1 {
                return resolve(root, real[0]);
            }
        }
    }
    node
}

fn description<'a>(root: &'a Value, node: &'a Value) -> &'a str {
    node["description"].as_str().or_else(|| resolve(root, node)["description"].as_str()).unwrap_or("")
}

/// A short type name, as kubectl shows it: `<string>`, `<[]Port>`, `<map[string]string>`, `<Object>`.
fn type_name(root: &Value, node: &Value) -> String {
    let name_of_ref = |n: &Value| n["$ref"].as_str().map(|r| r.rsplit('/').next().unwrap_or("").to_string());
    if let Some(n) = name_of_ref(node) {
        let r = resolve(root, node);
        if r["enum"].is_array() || r["oneOf"].as_array().is_some_and(|v| v.iter().all(|x| x["const"].is_string())) {
            return "string".into();
        }
        return n;
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(vs) = node[key].as_array() {
            let real: Vec<&Value> = vs.iter().filter(|v| v["type"] != "null").collect();
            if real.len() == 1 {
                return type_name(root, real[0]);
            }
            if !real.is_empty() {
                return real.iter().map(|v| type_name(root, v)).collect::<Vec<_>>().join(" | ");
            }
        }
    }
    let ty = match &node["type"] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("").to_string(),
        _ if node["const"].is_string() => "string".into(),
        _ => "Object".into(),
    };
    match ty.as_str() {
        "array" => format!("[]{}", type_name(root, &node["items"])),
        "object" if node["additionalProperties"].is_object() => {
            format!("map[string]{}", type_name(root, &node["additionalProperties"]))
        }
        "object" => "Object".into(),
        "" => "Object".into(),
        other => other.to_string(),
    }
}

/// The values an enum field takes, when its schema lists them.
fn allowed(root: &Value, node: &Value) -> Vec<String> {
    let r = resolve(root, node);
    let mut out: Vec<String> =
        r["enum"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
    for v in r["oneOf"].as_array().into_iter().flatten() {
        if let Some(c) = v["const"].as_str() {
            out.push(c.to_string());
        }
    }
    out
}

/// Prints what `what` (`KIND` or `KIND.field.path`) is.
pub fn explain(what: &str) -> Result<u8> {
    let mut parts = what.split('.');
    let kind_name = parts.next().unwrap_or("");
    let kind = Kind::parse(kind_name).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        Failure::invalid(format!("error: unknown kind `{kind_name}`\n  hint: known kinds: {}", known.join(", ")))
    })?;
    let root = kind.schema();
    let mut node = &root;
    let mut path = Vec::new();
    for field in parts {
        let mut here = resolve(&root, node);
        if here["type"] == "array" || here["items"].is_object() {
            here = resolve(&root, &here["items"]);
        }
        let next = &here["properties"][field];
        if next.is_null() {
            let known: Vec<&String> = here["properties"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
            let at = if path.is_empty() { kind.name().to_string() } else { path.join(".") };
            return Err(Failure::invalid(format!(
                "error: field `{field}` does not exist in {at}\n  hint: fields here: {}",
                known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
        path.push(field.to_string());
        node = next;
    }
    let mut out = format!("KIND:       {}\nVERSION:    {}\n", kind.name(), kind.api_version());
    if !path.is_empty() {
        out.push_str(&format!("\nFIELD:      {} <{}>\n", path.join("."), type_name(&root, node)));
    }
    let desc = description(&root, node);
    out.push_str(&format!("\nDESCRIPTION:\n{}\n", indent(if desc.is_empty() { "<empty>" } else { desc }, 4)));
    let values = allowed(&root, node);
    if !values.is_empty() {
        out.push_str(&format!("\nVALUES:\n    {}\n", values.join(", ")));
    }
    let mut here = resolve(&root, node);
    if here["type"] == "array" {
        here = resolve(&root, &here["items"]);
    }
    if let Some(props) = here["properties"].as_object() {
        let required: Vec<&str> = here["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        out.push_str("\nFIELDS:\n");
        for (name, p) in props {
            let req = if required.contains(&name.as_str()) { " -required-" } else { "" };
            out.push_str(&format!("  {name}\t<{}>{req}\n", type_name(&root, p)));
            let d = description(&root, p);
            if !d.is_empty() {
                out.push_str(&format!("{}\n\n", indent(d, 4)));
            }
        }
    }
    print!("{out}");
    Ok(EXIT_OK)
}

fn indent(text: &str, n: usize) -> String {
    text.lines().map(|l| format!("{}{l}", " ".repeat(n))).collect::<Vec<_>>().join("\n")
}
