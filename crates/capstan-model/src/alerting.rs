//! The `AlertRule` and `EscalationPolicy` kinds: Prometheus-style alerting rules over the embedded metrics, and
//! who is told about the incidents they open, in which order, until someone acknowledges.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::parse_duration;
use crate::validate::FieldError;

/// An alerting rule, as one `alert:` entry of a Prometheus rule group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertRuleSpec {
    /// The `alertname` label; defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// A PromQL expression; every element of its result is an alert.
    pub expr: String,
    /// How long an alert stays pending before it fires. Default 0: it fires at once.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// How long a firing alert keeps firing after its condition stops holding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
    /// Added to (or replacing) the labels of each alert.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Texts for humans; `{{ $labels.x }}` and `{{ $value }}` are filled in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// How often the rule is evaluated. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// One alert of a rule, as Prometheus' `/api/v1/alerts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertStatus {
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
    /// When the condition started holding (RFC 3339).
    pub active_at: String,
    /// The value of the expression at the last evaluation.
    pub value: String,
}

/// What Capstan reports about a rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRuleStatus {
    /// `ok`, `err` or `unknown`.
    #[serde(default)]
    pub health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertStatus>,
}

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum NotifyTarget {
    /// An HTTP POST of Alertmanager's webhook payload (version 4).
    Webhook { url: String },
    /// An external Alertmanager: the incident's alerts are posted to its `/api/v2/alerts`.
    Alertmanager { url: String },
    /// A program run with the payload on its standard input and CAPSTAN_INCIDENT_* in its environment.
    Command { command: Vec<String> },
    /// Mail through an SMTP server (plain SMTP, as to a local relay).
    Email {
        to: Vec<String>,
        #[serde(default = "default_from")]
        from: String,
        /// `host:port`.
        smarthost: String,
    },
}

fn default_from() -> String {
    "capstan@localhost".into()
}

/// One step of an escalation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EscalationLevel {
    /// Who is told at this level.
    pub targets: Vec<NotifyTarget>,
    /// How long the incident may stay unacknowledged at this level before the next one is told.
    #[serde(default = "default_delay")]
    pub after: String,
}

fn default_delay() -> String {
    "5m".into()
}

/// Who hears about incidents, and how they escalate (PagerDuty's escalation policies, on Alertmanager's model of
/// grouping).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EscalationPolicySpec {
    /// Alerts whose labels include all of these pairs are handled by this policy. Empty: every alert.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub r#match: BTreeMap<String, String>,
    /// Alerts with equal values of these labels form one incident. Default: `alertname`.
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// Levels, told in order while nobody acknowledges.
    pub levels: Vec<EscalationLevel>,
    /// How many more times the whole list is gone through after the last level. Default 0.
    #[serde(default)]
    pub repeat: u32,
    /// After an acknowledgement, how long before an unresolved incident triggers again. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge_timeout: Option<String>,
}

fn default_group_by() -> Vec<String> {
    vec!["alertname".into()]
}

/// What Capstan reports about a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EscalationPolicyStatus {
    /// Incidents not yet resolved.
    #[serde(default)]
    pub open_incidents: u32,
}

fn duration_field(path: &str, v: &str, errors: &mut Vec<FieldError>) {
    if let Err(e) = parse_duration(v) {
        errors.push(FieldError::new(path, e));
    }
}

fn label_name_ok(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Checks an AlertRule beyond its types (the expression itself is parsed at admission).
pub fn validate_alert_rule(spec: &AlertRuleSpec, errors: &mut Vec<FieldError>) {
    if spec.expr.trim().is_empty() {
        errors.push(FieldError::new("spec.expr", "empty expression").hint("write a PromQL expression, e.g. up == 0"));
    }
    for (field, v) in
        [("spec.for", &spec.for_), ("spec.keepFiringFor", &spec.keep_firing_for), ("spec.interval", &spec.interval)]
    {
        if let Some(v) = v {
            duration_field(field, v, errors);
        }
    }
    if let Some(i) = &spec.interval {
        if parse_duration(i).is_ok_and(|d| d.as_millis() < 100) {
            errors.push(FieldError::new("spec.interval", "must be at least 100ms"));
        }
    }
    for k in spec.labels.keys().chain(spec.annotations.keys()) {
        if !label_name_ok(k) {
            errors.push(
                FieldError::new(format!("spec.labels.{k}"), format!("`{k}` is not a valid label name"))
                    .hint("letters, digits and underscores, not starting with a digit"),
            );
        }
    }
}

/// Checks an EscalationPolicy beyond its types.
pub fn validate_escalation_policy(spec: &EscalationPolicySpec, errors: &mut Vec<FieldError>) {
    if spec.levels.is_empty() {
        errors.push(FieldError::new("spec.levels", "at least one level is needed").hint("levels: [{targets: [...]}]"));
    }
    for (i, l) in spec.levels.iter().enumerate() {
        duration_field(&format!("spec.levels[{i}].after"), &l.after, errors);
        if l.targets.is_empty() {
            errors.push(FieldError::new(format!("spec.levels[{i}].targets"), "a level needs at least one target"));
        }
        for (j, t) in l.targets.iter().enumerate() {
            let path = format!("spec.levels[{i}].targets[{j}]");
            match t {
                NotifyTarget::Webhook { url } | NotifyTarget::Alertmanager { url } => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        errors.push(
                            FieldError::new(format!("{path}.url"), format!("`{url}` is not an http(s) URL"))
                                .hint("for example http://127.0.0.1:9093"),
                        );
                    }
                }
                NotifyTarget::Command { command } => {
                    if command.is_empty() {
                        errors.push(FieldError::new(format!("{path}.command"), "empty command"));
                    }
                }
                NotifyTarget::Email { to, smarthost, .. } => {
                    if to.is_empty() {
                        errors.push(FieldError::new(format!("{path}.to"), "no recipient"));
                    }
                    if !smarthost.contains(':') {
                        errors.push(
                            FieldError::new(format!("{path}.smarthost"), format!("`{smarthost}` has no port"))
                                .hint("host:port, e.g. 127.0.0.1:25"),
                        );
                    }
                }
            }
        }
    }
    if let Some(t) = &spec.acknowledge_timeout {
        duration_field("spec.acknowledgeTimeout", t, errors);
    }
    for k in spec.r#match.keys().chain(spec.group_by.iter()) {
        if !label_name_ok(k) {
            errors.push(FieldError::new("spec.groupBy", format!("`{k}` is not a valid label name")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_durations_and_targets_are_named() {
        let rule: AlertRuleSpec =
            serde_json::from_value(serde_json::json!({"expr": "up == 0", "for": "5 minutes", "labels": {"9x": "a"}}))
                .expect("decodes");
        let mut e = Vec::new();
        validate_alert_rule(&rule, &mut e);
        let paths: Vec<&str> = e.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, ["spec.for", "spec.labels.9x"]);

        let policy: EscalationPolicySpec = serde_json::from_value(serde_json::json!({
            "levels": [{"targets": [{"webhook": {"url": "ftp://x"}}, {"email": {"to": [], "smarthost": "mail"}}], "after": "soon"}]
        }))
        .expect("decodes");
        let mut e = Vec::new();
        validate_escalation_policy(&policy, &mut e);
        let paths: Vec<&str> = e.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.levels[0].after",
                "spec.levels[0].targets[0].url",
                "spec.levels[0].targets[1].to",
                "spec.levels[0].targets[1].smarthost"
            ]
        );
        assert_eq!(policy.group_by, ["alertname"]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<AlertRuleSpec, _> = serde_json::from_value(serde_json::json!({"expr": "up", "fro": "1m"}));
        assert!(r.is_err());
        let t: Result<NotifyTarget, _> = serde_json::from_value(serde_json::json!({"pager": {"url": "x"}}));
        assert!(t.is_err());
    }
}
