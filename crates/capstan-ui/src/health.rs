//! An object's health as the overview shows it, from its conditions alone: Ready, Progressing, Stalled or Failed
//! (kstatus' words), Unknown before a controller has said anything, and none for kinds that have no status
//! (Secrets, ConfigMaps).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    Failed,
    Stalled,
    Progressing,
    Unknown,
    Ready,
    /// A kind without status (a Secret).
    None,
}

impl Health {
    pub const ALL: [Health; 6] =
        [Health::Failed, Health::Stalled, Health::Progressing, Health::Unknown, Health::Ready, Health::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Failed => "Failed",
            Health::Stalled => "Stalled",
            Health::Progressing => "Progressing",
            Health::Unknown => "Unknown",
            Health::Ready => "Ready",
            Health::None => "—",
        }
    }

    /// The CSS class of its colour.
    pub fn class(self) -> &'static str {
        match self {
            Health::Failed => "health health-failed",
            Health::Stalled => "health health-stalled",
            Health::Progressing => "health health-progressing",
            Health::Unknown | Health::None => "health health-unknown",
            Health::Ready => "health health-ready",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.as_str().eq_ignore_ascii_case(s))
    }
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// The health of `obj` and the message that says why.
pub fn health_of(obj: &Value) -> (Health, String) {
    if matches!(obj["kind"].as_str(), Some("Secret" | "ConfigMap")) {
        return (Health::None, String::new());
    }
    let text = |c: Option<&Value>| c.and_then(|c| c["message"].as_str()).unwrap_or_default().to_string();
    let is = |c: Option<&Value>, s: &str| c.is_some_and(|c| c["status"] == s);
    let (ready, stalled, reconciling) =
        (condition(obj, "Ready"), condition(obj, "Stalled"), condition(obj, "Reconciling"));
    // Gateway API's objects say Programmed (a Gateway) or Accepted (a route).
    let programmed = condition(obj, "Programmed").or_else(|| condition(obj, "Accepted"));
    if is(stalled, "True") {
        return (Health::Stalled, text(stalled));
    }
    if let Some(r) = ready {
        // A Ready from before the last change is not the object's health yet.
        let seen = r["observedGeneration"].as_i64();
        let generation = obj["metadata"]["generation"].as_i64();
        if seen.zip(generation).is_some_and(|(s, g)| s < g) {
            return (Health::Progressing, "the controller has not seen the last change yet".into());
        }
        return match r["status"].as_str() {
            Some("True") => (Health::Ready, text(Some(r))),
            _ if is(reconciling, "True") => {
                let why = Some(text(reconciling)).filter(|m| !m.is_empty()).unwrap_or_else(|| text(Some(r)));
                (Health::Progressing, why)
            }
            Some("Unknown") => (Health::Progressing, text(Some(r))),
            _ => (Health::Failed, text(Some(r))),
        };
    }
    // A route: Accepted by every parent.
    if let Some(parents) = obj["status"]["parents"].as_array().filter(|p| !p.is_empty()) {
        let refused = parents.iter().flat_map(|p| p["conditions"].as_array().into_iter().flatten()).find(|c| {
            c["type"] == "Accepted" && c["status"] != "True" || c["type"] == "ResolvedRefs" && c["status"] == "False"
        });
        return match refused {
            Some(c) => (Health::Failed, text(Some(c))),
            None => (Health::Ready, String::new()),
        };
    }
    match programmed {
        Some(p) if p["status"] == "True" => (Health::Ready, text(Some(p))),
        Some(p) => (Health::Failed, text(Some(p))),
        None if is(reconciling, "True") => (Health::Progressing, text(reconciling)),
        None => (Health::Unknown, "no status yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(conditions: Value) -> Value {
        json!({"kind": "App", "metadata": {"generation": 2}, "status": {"conditions": conditions}})
    }

    #[test]
    fn health_follows_the_conditions() {
        let ready = with(json!([{"type": "Ready", "status": "True", "message": "2/2", "observedGeneration": 2}]));
        assert_eq!(health_of(&ready), (Health::Ready, "2/2".into()));
        let stale = with(json!([{"type": "Ready", "status": "True", "observedGeneration": 1}]));
        assert_eq!(health_of(&stale).0, Health::Progressing, "a Ready from before the change");
        let rolling = with(json!([{"type": "Ready", "status": "False", "message": "1/2"},
                                  {"type": "Reconciling", "status": "True", "message": "rolling out"}]));
        assert_eq!(health_of(&rolling).0, Health::Progressing);
        let failed = with(json!([{"type": "Ready", "status": "False", "message": "crash loop"}]));
        assert_eq!(health_of(&failed), (Health::Failed, "crash loop".into()));
        let stalled = with(
            json!([{"type": "Ready", "status": "False"}, {"type": "Stalled", "status": "True", "message": "bad"}]),
        );
        assert_eq!(health_of(&stalled), (Health::Stalled, "bad".into()));
        assert_eq!(health_of(&json!({"kind": "App"})).0, Health::Unknown);
        assert_eq!(health_of(&json!({"kind": "Secret"})).0, Health::None);
        let route = json!({"kind": "HTTPRoute", "status": {"parents": [
            {"conditions": [{"type": "Accepted", "status": "True"}, {"type": "ResolvedRefs", "status": "True"}]},
            {"conditions": [{"type": "Accepted", "status": "False", "message": "no such listener"}]}]}});
        assert_eq!(health_of(&route), (Health::Failed, "no such listener".into()));
        let gateway = json!({"kind": "Gateway", "status": {"conditions": [{"type": "Programmed", "status": "True"}]}});
        assert_eq!(health_of(&gateway).0, Health::Ready);
        assert_eq!(Health::parse("ready"), Some(Health::Ready));
    }
}
