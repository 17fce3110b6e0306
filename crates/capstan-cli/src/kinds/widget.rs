//! The throwaway Widget (feature `throwaway-kind`) in `get` and `describe`: its size, colour and shape.

use chrono::{DateTime, Utc};
use serde_json::Value;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "SIZE", "COLOUR", "SHAPE", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).unwrap_or("-").to_string();
    vec![
        o["spec"]["size"].as_u64().map_or_else(|| "-".into(), |n| n.to_string()),
        text(&o["spec"]["colour"]),
        text(&o["status"]["shape"]),
    ]
}

/// Its spec and what its controller made of it; a Widget's status has no conditions.
pub fn describe(o: &Value, _now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    field("Size", spec["size"].as_u64().map(|n| n.to_string()).unwrap_or_default());
    field("Colour", s(&spec["colour"]));
    field("Shape", s(&o["status"]["shape"]));
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    use crate::kinds::{columns, describe, row};

    #[test]
    fn a_widget_shows_its_size_colour_and_shape() {
        let o = json!({
            "metadata": {"name": "w", "namespace": "default", "creationTimestamp": "2026-12-06T10:00:00Z"},
            "spec": {"size": 3, "colour": "red"},
            "status": {"observedGeneration": 1, "shape": "square"}
        });
        assert_eq!(columns(Kind::Widget, false), ["NAME", "SIZE", "COLOUR", "SHAPE", "AGE"]);
        assert_eq!(row(Kind::Widget, &o, false, false, Utc::now())[..4], ["w", "3", "red", "square"]);
        let text = describe(Kind::Widget, &o, &json!({"items": []}), Utc::now());
        assert!(text.contains("Kind:             Widget"), "{text}");
        assert!(text.contains("Size:             3"), "{text}");
        assert!(text.contains("Colour:           red"), "{text}");
        assert!(text.contains("Shape:            square"), "{text}");
        assert!(!text.contains("Conditions:"), "{text}");
    }
}
