//! Output helpers: aligned tables, ages, and JSON/YAML printing.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Prints rows as left-aligned columns separated by three spaces, as kubectl does.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A short age such as `45s`, `12m`, `3h`, `5d`, as kubectl prints them.
pub fn age(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    since.map_or_else(|| "<unknown>".into(), |t| capstan_model::short_age(t, now))
}

/// Parses a timestamp field of an object.
pub fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

/// Renders a list of objects as JSON or YAML (a single object alone, several as a `List`).
pub fn render(objects: &[Value], format: &str, single: bool) -> String {
    let v = if single && objects.len() == 1 {
        objects[0].clone()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
    };
    match format {
        "yaml" => capstan_model::yaml::to_yaml_string(&v),
        _ => serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
    }
}

/// Who owns an object, from its owner record: `Sync default/apps` (None when nobody does).
pub fn managed_by(metadata: &Value) -> Option<String> {
    metadata["managedFields"].as_array()?.iter().find_map(|e| {
        let rest = e["manager"].as_str()?.strip_prefix(capstan_model::SYNC_MANAGER_PREFIX)?;
        Some(format!("Sync {rest}"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_owner_record_reads_as_a_sync() {
        let md =
            serde_json::json!({"managedFields": [{"manager": "sync.capstan.dev/default/apps", "operation": "Apply"}]});
        assert_eq!(managed_by(&md).as_deref(), Some("Sync default/apps"));
        assert_eq!(managed_by(&serde_json::json!({})), None);
    }

    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["NAME", "READY"], &[vec!["hello".into(), "2/2".into()], vec!["a".into(), "0/1".into()]]);
        assert_eq!(t, "NAME    READY\nhello   2/2\na       0/1");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = Utc::now();
        assert_eq!(age(Some(now - chrono::Duration::seconds(42)), now), "42s");
        assert_eq!(age(Some(now - chrono::Duration::minutes(15)), now), "15m");
        assert_eq!(age(Some(now - chrono::Duration::hours(5)), now), "5h");
        assert_eq!(age(Some(now - chrono::Duration::days(9)), now), "9d");
    }
}
