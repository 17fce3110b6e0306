//! What a caller may see and send: Secrets without their values for a token that may not read them, refusals
//! naming what was refused, and a batch checked object by object against the caller's namespaces.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::access::{Grant, Verb};
use crate::error::ApiError;

/// The annotation on a Secret whose values were removed before it was shown.
pub const REDACTED_ANNOTATION: &str = "capstan.dev/redacted";
/// What replaces each value.
pub const MASK: &str = "<redacted>";

/// The namespace an object as JSON is in (empty for a cluster-scoped kind: only a grant bound to every namespace
/// passes).
pub fn namespace_of(obj: &Value) -> String {
    capstan_model::resource::namespace_of(obj).to_string()
}

/// 403 naming who was refused what.
pub fn forbidden(grant: &Grant, what: &str) -> ApiError {
    ApiError::Status(StatusCode::FORBIDDEN, format!("{} ({}) may not {what}", grant.user, grant.scope()))
}

/// Removes a Secret's values (keeping its keys) when `grant` may not read them, and says so in an annotation.
/// Every other object is left as it is. Returns whether Secret values are shown (a Secret left whole), which the
/// audit log records.
pub fn object(grant: &Grant, obj: &mut Value) -> bool {
    if obj["kind"] != "Secret" {
        return false;
    }
    if grant.allows(Verb::ReadSecrets, Some(&namespace_of(obj))) {
        return true;
    }
    for field in ["data", "stringData"] {
        if let Some(values) = obj["spec"].get_mut(field).and_then(Value::as_object_mut) {
            for v in values.values_mut() {
                *v = json!(MASK);
            }
        }
    }
    let meta = &mut obj["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][REDACTED_ANNOTATION] = json!(format!(
        "values removed: {} ({}) may not read Secret values (role secrets-reader)",
        grant.user,
        grant.scope()
    ));
    false
}

/// An answer that showed Secret values when `shown`, marked for the audit log.
pub fn answer(body: Value, shown: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = axum::Json(body).into_response();
    if shown {
        response.extensions_mut().insert(crate::audit::SecretValuesShown);
    }
    response
}

/// Refuses a batch with an object outside the caller's namespaces, or a Secret that was shown redacted (applying
/// it back would replace its values with masks).
pub fn check_batch(grant: &Grant, objects: &[Value]) -> Result<(), ApiError> {
    for obj in objects {
        let ns = namespace_of(obj);
        let kind = obj["kind"].as_str().unwrap_or("object");
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        if !grant.allows(Verb::Write, Some(&ns)) {
            let place = match ns.as_str() {
                "" => "(cluster-scoped: a token bound to every namespace applies it)".to_string(),
                ns => format!("in namespace {ns}"),
            };
            return Err(forbidden(grant, &format!("apply {kind} {name} {place}")));
        }
        if let Some(bound) = &grant.namespace {
            // What would reach past the namespace: a Sync applies its repository's objects wherever they say
            // (unless its targetNamespace puts them all in one), and alert rules and escalation policies read and
            // route every namespace's metrics.
            if kind == "Sync" && obj["spec"]["targetNamespace"].as_str() != Some(bound.as_str()) {
                return Err(forbidden(
                    grant,
                    &format!(
                        "apply Sync {name} without spec.targetNamespace: {bound} (a token bound to one namespace \
                         applies a repository into that namespace only)"
                    ),
                ));
            }
            if kind == "AlertRule" || kind == "EscalationPolicy" {
                return Err(forbidden(
                    grant,
                    &format!(
                        "apply {kind} {name}: alerting reads every namespace's metrics, so it needs a binding to all"
                    ),
                ));
            }
        }
        if kind == "Secret" && obj["metadata"]["annotations"].get(REDACTED_ANNOTATION).is_some() {
            return Err(ApiError::BadRequest(format!(
                "Secret {ns}/{name} carries {REDACTED_ANNOTATION}: it was read without its values, and applying it \
                 would store the masks\n  hint: apply the Secret from its source (the manifest with its values)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    fn secret(ns: &str) -> Value {
        json!({"kind": "Secret", "metadata": {"name": "db", "namespace": ns},
               "spec": {"stringData": {"password": "hunter2"}, "data": {"token": "c2VjcmV0"}}})
    }

    #[test]
    fn secret_values_are_removed_unless_the_grant_reads_them_there() {
        let viewer = Grant { user: "v".into(), role: Role::Viewer, namespace: None, token: None };
        let mut s = secret("team-a");
        assert!(!object(&viewer, &mut s), "nothing shown");
        assert!(!s.to_string().contains("hunter2") && !s.to_string().contains("c2VjcmV0"), "{s}");
        assert_eq!(s["spec"]["stringData"]["password"], MASK, "the keys stay");
        assert!(s["metadata"]["annotations"][REDACTED_ANNOTATION].as_str().unwrap().contains("secrets-reader"));

        let reader =
            Grant { user: "r".into(), role: Role::SecretsReader, namespace: Some("team-a".into()), token: None };
        let mut s = secret("team-a");
        assert!(object(&reader, &mut s), "values shown: audited");
        assert_eq!(s, secret("team-a"));
        let mut other = secret("team-b");
        object(&reader, &mut other);
        assert_eq!(other["spec"]["stringData"]["password"], MASK, "only in its namespace");

        let mut app = json!({"kind": "App", "metadata": {"name": "a"}, "spec": {"command": ["x"]}});
        let before = app.clone();
        object(&viewer, &mut app);
        assert_eq!(app, before);
    }

    #[test]
    fn a_namespaced_token_cannot_reach_past_its_namespace_through_syncs_or_alerting() {
        let d = Grant { user: "d".into(), role: Role::Deployer, namespace: Some("team-a".into()), token: None };
        let sync = |target: Option<&str>| {
            json!({"kind": "Sync", "metadata": {"name": "s", "namespace": "team-a"},
                   "spec": {"sourceRef": {"name": "src"}, "targetNamespace": target}})
        };
        assert!(check_batch(&d, &[sync(Some("team-a"))]).is_ok());
        for bad in [None, Some("team-b")] {
            let e = check_batch(&d, &[sync(bad)]).unwrap_err().to_string();
            assert!(e.contains("targetNamespace: team-a"), "{e}");
        }
        let rule = json!({"kind": "AlertRule", "metadata": {"name": "r", "namespace": "team-a"}, "spec": {}});
        assert!(check_batch(&d, std::slice::from_ref(&rule)).unwrap_err().to_string().contains("binding to all"));
        let all = Grant { namespace: None, ..d };
        assert!(check_batch(&all, &[rule, sync(None)]).is_ok(), "a binding to all may");
    }

    #[test]
    fn a_batch_stays_in_the_callers_namespaces_and_a_redacted_secret_is_not_applied_back() {
        let deployer = Grant { user: "d".into(), role: Role::Deployer, namespace: Some("team-a".into()), token: None };
        assert!(check_batch(&deployer, &[secret("team-a")]).is_ok());
        let e = check_batch(&deployer, &[secret("team-a"), secret("team-b")]).unwrap_err();
        assert!(e.to_string().contains("namespace team-b"), "{e}");
        let mut shown = secret("team-a");
        object(&deployer, &mut shown);
        let e = check_batch(&deployer, &[shown]).unwrap_err();
        assert!(e.to_string().contains(REDACTED_ANNOTATION), "{e}");
    }
}
