//! Reading manifests from YAML text into typed resources, with diagnostics that name file, line and field.

use crate::resource::Resource;
use crate::validate::FieldError;
use crate::yaml::{parse_documents, Document, Location};

/// One problem in one manifest, written for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or `-` for standard input).
    pub file: String,
    pub location: Option<Location>,
    /// `App/hello`, when the object got far enough to have a kind and name.
    pub object: Option<String>,
    /// The field path, as `spec.ports[0].name`.
    pub field: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic for a field error inside a parsed document.
    pub fn from_field(file: &str, doc: &Document, object: Option<String>, e: FieldError) -> Self {
        let location = Some(if e.path.is_empty() { doc.start } else { doc.locate(&e.path) });
        Diagnostic {
            file: file.to_string(),
            location,
            object,
            field: (!e.path.is_empty()).then_some(e.path),
            message: e.message,
            hint: e.hint,
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.location {
            write!(f, ":{}:{}", l.line, l.column)?;
        }
        write!(f, ": ")?;
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Every problem found in a batch of manifests; nothing of the batch should be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {d}")?;
        }
        Ok(())
    }
}

/// A resource read from a file, remembering where it came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub resource: Resource,
    pub file: String,
    pub document: Document,
}

impl Manifest {
    /// Describes a field error of this object with its file and line.
    pub fn diagnose(&self, e: FieldError) -> Diagnostic {
        let object = Some(format!("{}/{}", self.resource.kind(), self.resource.meta().name));
        Diagnostic::from_field(&self.file, &self.document, object, e)
    }
}

fn object_label(doc: &Document) -> Option<String> {
    let kind = doc.value.get("kind")?.as_str()?;
    let name = doc.value.get("metadata")?.get("name")?.as_str()?;
    Some(format!("{kind}/{name}"))
}

/// Parses and validates every document in `text`. `file` is only used in diagnostics.
///
/// All problems are collected, so a user sees everything wrong with a batch at once.
pub fn parse_manifests(file: &str, text: &str) -> Result<Vec<Manifest>, Diagnostics> {
    let docs = parse_documents(text).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            location: Some(e.location),
            object: None,
            field: None,
            message: format!("invalid YAML: {}", e.message),
            hint: Some("check the indentation and quoting around this line".into()),
        }])
    })?;
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for doc in docs {
        let mut value = doc.value.clone();
        if let Some(m) = value.as_object_mut() {
            m.remove("status");
        }
        match Resource::from_value(value) {
            Ok(resource) => {
                let errors = resource.validate();
                let m = Manifest { resource, file: file.to_string(), document: doc };
                if errors.is_empty() {
                    out.push(m);
                } else {
                    diags.extend(errors.into_iter().map(|e| m.diagnose(e)));
                }
            }
            Err(e) => {
                let label = object_label(&doc);
                let mut found: Vec<Diagnostic> = every_decode_error(&doc.value, e)
                    .into_iter()
                    .map(|e| Diagnostic::from_field(file, &doc, label.clone(), e))
                    .collect();
                // In the order of the file, as a reader goes through it.
                found.sort_by_key(|d| d.location.map(|l| (l.line, l.column)));
                diags.extend(found);
            }
        }
    }
    if !diags.is_empty() {
        return Err(Diagnostics(diags));
    }
    Ok(out)
}

/// The most decode errors one object reports; past it, fixing the first ones is the better next step.
const MAX_DECODE_ERRORS: usize = 20;

/// Every field of an object that cannot be decoded, not just the first: decoding stops at the first error, so the
/// field it names is taken out of a copy and decoding tried again, until it succeeds or an error cannot be stepped
/// over (a required field, a field already taken out).
fn every_decode_error(value: &serde_json::Value, first: FieldError) -> Vec<FieldError> {
    let mut value = value.clone();
    if let Some(m) = value.as_object_mut() {
        m.remove("status");
    }
    let mut errors = vec![first];
    while errors.len() < MAX_DECODE_ERRORS {
        let last = &errors[errors.len() - 1];
        if last.message == "is required" || last.path.is_empty() || !remove_path(&mut value, &last.path) {
            break;
        }
        match Resource::from_value(value.clone()) {
            Ok(_) => break,
            Err(e) if e.message == "is required" && errors.iter().any(|x| x.path == e.path) => break,
            Err(e) if errors.iter().any(|x| x.path == e.path && x.message == e.message) => break,
            Err(e) => errors.push(e),
        }
    }
    errors
}

/// Removes the field at `path` (`spec.ports[0].name`) from `value`; false when there is no such field.
fn remove_path(value: &mut serde_json::Value, path: &str) -> bool {
    let mut steps: Vec<Step> = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            steps.push(Step::Key(name.to_string()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            match idx.trim_end_matches(']').parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => return false,
            }
        }
    }
    let Some((last, parents)) = steps.split_last() else { return false };
    let mut at = value;
    for step in parents {
        at = match (step, at) {
            (Step::Key(k), serde_json::Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Step::Index(i), serde_json::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at) {
        (Step::Key(k), serde_json::Value::Object(m)) => m.remove(k).is_some(),
        (Step::Index(i), serde_json::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

enum Step {
    Key(String),
    Index(usize),
}

/// Checks a batch read from several files for objects declared twice.
pub fn check_duplicates(manifests: &[Manifest]) -> Result<(), Diagnostics> {
    let mut seen = std::collections::HashMap::new();
    let mut diags = Vec::new();
    for m in manifests {
        let key = m.resource.key();
        if let Some(first) = seen.insert(key.clone(), m) {
            let loc = first.document.start;
            diags.push(
                m.diagnose(
                    FieldError::new("metadata.name", format!("{} is declared twice", key))
                        .hint(format!("first declared at {}:{}", first.file, loc.line)),
                ),
            );
        }
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(diags))
    }
}

/// The candidate closest to `word`, if close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&w, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(w.len()) / 3).max(1) + usize::from(c.len() > 6))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<Diagnostic> {
        parse_manifests("app.yaml", text).unwrap_err().0
    }

    const GOOD: &str = "apiVersion: capstan.dev/v1alpha1
kind: App
metadata:
  name: web
spec:
  replicas: 2
  run:
    command: [./server]
  ports: [{name: http}]
  probes:
    readiness: {http: {path: /status, port: http}, periodSeconds: 2}
";

    #[test]
    fn good_manifest_parses_with_defaults() {
        let m = parse_manifests("app.yaml", GOOD).unwrap();
        assert_eq!(m.len(), 1);
        let crate::Resource::App(app) = &m[0].resource else { panic!("expected an App") };
        assert_eq!(app.spec.replicas, 2);
        assert_eq!(app.metadata.namespace(), "default");
        let r = app.spec.probes.readiness.as_ref().unwrap();
        assert_eq!((r.period_seconds, r.timeout_seconds, r.failure_threshold), (2, 1, 3));
        assert_eq!(app.spec.termination_grace_period_seconds, 30);
    }

    #[test]
    fn unknown_field_names_line_and_suggests() {
        let text = GOOD.replace("  replicas: 2", "  replcas: 2");
        let e = errs(&text);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field.as_deref(), Some("spec.replcas"));
        assert_eq!(e[0].location.unwrap().line, 6);
        assert_eq!(e[0].hint.as_deref(), Some("did you mean `replicas`?"));
        assert_eq!(e[0].object.as_deref(), Some("App/web"));
        let shown = e[0].to_string();
        assert!(shown.starts_with("app.yaml:6:3: App/web: field `spec.replcas`: unknown field"), "{shown}");
    }

    #[test]
    fn nested_unknown_field() {
        let text = GOOD.replace("periodSeconds: 2", "periodSecond: 2");
        let e = errs(&text);
        assert_eq!(e[0].field.as_deref(), Some("spec.probes.readiness.periodSecond"));
        assert_eq!(e[0].location.unwrap().line, 11);
        assert_eq!(e[0].hint.as_deref(), Some("did you mean `periodSeconds`?"));
    }

    #[test]
    fn negative_replicas_and_bad_name_and_unknown_port_all_reported() {
        let text = GOOD
            .replace("replicas: 2", "replicas: -1")
            .replace("name: web", "name: Web_App")
            .replace("port: http}", "port: htp}");
        let e = errs(&text);
        let fields: Vec<_> = e.iter().map(|d| d.field.clone().unwrap()).collect();
        assert!(fields.contains(&"spec.replicas".to_string()), "{fields:?}");
        assert!(fields.contains(&"metadata.name".to_string()));
        assert!(fields.contains(&"spec.probes.readiness.http.port".to_string()));
        let port = e.iter().find(|d| d.field.as_deref() == Some("spec.probes.readiness.http.port")).unwrap();
        assert_eq!(port.hint.as_deref(), Some("did you mean `http`?"));
        assert_eq!(port.location.unwrap().line, 11);
        let name = e.iter().find(|d| d.field.as_deref() == Some("metadata.name")).unwrap();
        assert_eq!(name.hint.as_deref(), Some("try `web-app`"));
    }

    #[test]
    fn unknown_kind_and_api_version() {
        let e = errs(&GOOD.replace("kind: App", "kind: Ap"));
        assert_eq!(e[0].field.as_deref(), Some("kind"));
        assert_eq!(e[0].location.unwrap().line, 2);
        assert_eq!(e[0].hint.as_deref(), Some("did you mean `App`?"));
        let e = errs(&GOOD.replace("capstan.dev/v1alpha1", "v1"));
        assert_eq!(e[0].field.as_deref(), Some("apiVersion"));
    }

    #[test]
    fn type_errors_and_missing_fields() {
        let e = errs(&GOOD.replace("replicas: 2", "replicas: two"));
        assert_eq!(e[0].field.as_deref(), Some("spec.replicas"));
        assert_eq!(e[0].location.unwrap().line, 6);
        let e = errs("apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: x}\nspec: {replicas: 1}\n");
        assert_eq!(e[0].field.as_deref(), Some("spec.run"));
        assert_eq!(e[0].message, "is required");
        let e = errs(&GOOD.replace("[{name: http}]", "[{name: http, port: 70000}]"));
        assert_eq!(e[0].field.as_deref(), Some("spec.ports[0].port"));
        assert!(e[0].hint.as_deref().unwrap().contains("65535"));
    }

    /// One object with three mistakes reports all three, each with its line.
    #[test]
    fn every_decode_error_of_an_object_is_reported() {
        let text = GOOD
            .replace("replicas: 2", "replicas: two")
            .replace("periodSeconds: 2", "periodSecond: 2")
            .replace("  ports: [{name: http}]", "  ports: [{name: http}]\n  update: {drainSecs: 5}");
        let e = errs(&text);
        let fields: Vec<_> = e.iter().map(|d| d.field.clone().unwrap_or_default()).collect();
        assert_eq!(fields, ["spec.replicas", "spec.update.drainSecs", "spec.probes.readiness.periodSecond"]);
        assert_eq!(e.iter().map(|d| d.location.unwrap().line).collect::<Vec<_>>(), [6, 10, 12]);
        assert_eq!(e[2].hint.as_deref(), Some("did you mean `periodSeconds`?"));
        // A required field missing stops the search: nothing after it would be trustworthy.
        let e = errs("apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: x}\nspec: {replicas: 1}\n");
        assert_eq!(e.len(), 1);
    }

    /// Like Prometheus, the default scrape timeout is clamped to a shorter interval; a timeout given longer than
    /// the interval stays an error.
    #[test]
    fn the_default_metrics_timeout_is_clamped_to_the_interval() {
        let with = |metrics: &str| {
            GOOD.replace("  ports: [{name: http}]", &format!("  ports: [{{name: http}}]\n  metrics: {metrics}"))
        };
        let m = parse_manifests("app.yaml", &with("{interval: 2s}")).unwrap();
        let crate::Resource::App(app) = &m[0].resource else { panic!("expected an App") };
        assert_eq!(app.spec.metrics.as_ref().unwrap().effective_timeout(), "2s");
        let m = parse_manifests("app.yaml", &with("{interval: 30s}")).unwrap();
        let crate::Resource::App(app) = &m[0].resource else { panic!("expected an App") };
        assert_eq!(app.spec.metrics.as_ref().unwrap().effective_timeout(), "10s");
        let e = errs(&with("{interval: 2s, timeout: 5s}"));
        assert_eq!(e[0].field.as_deref(), Some("spec.metrics.timeout"));
        assert!(e[0].message.contains("5s is longer than the interval 2s"), "{}", e[0].message);
    }

    #[test]
    fn remove_path_follows_keys_and_indices() {
        let mut v = serde_json::json!({"spec": {"ports": [{"name": "a", "x": 1}], "k": 2}});
        assert!(remove_path(&mut v, "spec.ports[0].x"));
        assert!(!remove_path(&mut v, "spec.ports[3].x"));
        assert!(remove_path(&mut v, "spec.k"));
        assert_eq!(v, serde_json::json!({"spec": {"ports": [{"name": "a"}]}}));
    }

    #[test]
    fn bad_yaml_names_the_line() {
        let e = errs("apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata:\n  name: [oops\nspec: {}\n");
        assert!(e[0].message.starts_with("invalid YAML"));
        assert!(e[0].location.unwrap().line >= 4);
    }

    #[test]
    fn fixed_port_with_many_replicas_is_refused_on_one_machine_only() {
        let ms = parse_manifests("app.yaml", &GOOD.replace("[{name: http}]", "[{name: http, port: 8080}]"))
            .expect("a cluster gives each replica its own address");
        let crate::Resource::App(app) = &ms[0].resource else { panic!("an App") };
        let e = crate::validate::validate_for_one_machine(&app.spec);
        assert_eq!(e[0].path, "spec.ports[0].port");
        assert!(e[0].message.contains("cannot be shared by 2 replicas on one machine"));
        let d = ms[0].diagnose(e[0].clone());
        assert_eq!(d.location.map(|l| l.line), Some(9), "the embedded runtime's admission names the line");
    }

    #[test]
    fn duplicates_across_files() {
        let mut a = parse_manifests("a.yaml", GOOD).unwrap();
        a.extend(parse_manifests("b.yaml", GOOD).unwrap());
        let e = check_duplicates(&a).unwrap_err().0;
        assert!(e[0].message.contains("declared twice"));
        assert_eq!(e[0].file, "b.yaml");
        assert!(e[0].hint.as_deref().unwrap().contains("a.yaml:1"));
    }

    #[test]
    fn status_in_manifest_is_ignored() {
        let text = format!("{GOOD}status: {{replicas: 9}}\n");
        let m = parse_manifests("x", &text).unwrap();
        let crate::Resource::App(app) = &m[0].resource else { panic!("expected an App") };
        assert!(app.status.is_none());
    }

    #[test]
    fn expose_and_update_are_checked() {
        let bad = GOOD.to_string()
            + "  expose:\n    - {port: 8080, targetPort: htp}\n    - {port: 8080, protocol: tcp, sticky: {cookie: {name: R}}}\n    - {port: 9000, address: localhost, sticky: {}, maxConnections: 0}\n  update: {strategy: Surge, maxSurge: 0, minReadySeconds: 30, progressDeadlineSeconds: 10}\n";
        let e = errs(&bad);
        let has = |field: &str, text: &str| {
            e.iter().any(|d| {
                d.field.as_deref() == Some(field)
                    && (d.message.contains(text) || d.hint.as_deref().is_some_and(|h| h.contains(text)))
            })
        };
        assert!(has("spec.expose[0].targetPort", "did you mean `http`?"), "{e:#?}");
        assert!(has("spec.expose[1].port", "used by two entry points"));
        assert!(has("spec.expose[1].sticky.cookie", "cannot read cookies"));
        assert!(has("spec.expose[2].address", "not an IP address"));
        assert!(has("spec.expose[2].sticky", "exactly one of cookie or clientIP"));
        assert!(has("spec.expose[2].maxConnections", "at least 1"));
        assert!(has("spec.update.maxSurge", "at least 1"));
        assert!(has("spec.update.progressDeadlineSeconds", "greater than minReadySeconds"));
        let line =
            e.iter().find(|d| d.field.as_deref() == Some("spec.expose[2].address")).unwrap().location.unwrap().line;
        assert_eq!(line, 15, "the third entry point's line");
        let ok = GOOD.to_string() + "  expose: [{port: 8080, sticky: {clientIP: {}}}, {port: 2222, protocol: tcp}]\n";
        let m = parse_manifests("x", &ok).unwrap();
        let crate::Resource::App(app) = &m[0].resource else { panic!("expected an App") };
        let ci = app.spec.expose[0].sticky.as_ref().unwrap().client_ip.as_ref().unwrap();
        assert_eq!(ci.timeout_seconds, 10800, "Kubernetes' default");
        assert_eq!(app.spec.expose[0].drain_seconds, 30);
        assert!(app.spec.expose[0].websockets && app.spec.expose[0].retry_idempotent);
        assert_eq!(app.spec.expose[0].max_connections, None, "no cap of its own unless given");
    }

    #[test]
    fn closest_matches_typos_only() {
        assert_eq!(closest("replcas", &["replicas", "run"]), Some("replicas"));
        assert_eq!(closest("zzz", &["replicas", "run"]), None);
    }
}
