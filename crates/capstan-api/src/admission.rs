//! Admission: the checks a batch must pass before it is stored — types, validation, and what the machine allows.

use std::collections::HashMap;

use capstan_model::{FieldError, ObjectKey, Resource};
use capstan_runtime_local::process::resolve_program;
use capstan_runtime_local::{search_path, working_dir};
use capstan_store::Store;
use serde::Serialize;
use serde_json::Value;

/// A problem with the object at `index` of a batch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AdmissionError {
    pub index: usize,
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl AdmissionError {
    fn new(index: usize, e: FieldError) -> Self {
        AdmissionError { index, path: e.path, message: e.message, hint: e.hint }
    }
}

/// An alerting expression must parse and give an instant vector.
fn check_expr(expr: &str) -> Option<FieldError> {
    use capstan_observe::promql::{expr_type, parse, ValueType};
    match parse(expr) {
        Err(e) => Some(
            FieldError::new("spec.expr", e.to_string())
                .hint("check the expression with the query API: /prometheus/api/v1/query?query=..."),
        ),
        Ok(ast) if expr_type(&ast) != ValueType::Vector => Some(
            FieldError::new("spec.expr", "the expression gives no instant vector, so it can never alert")
                .hint("compare a vector with a threshold, e.g. up == 0"),
        ),
        Ok(_) => None,
    }
}

/// Decodes and checks a batch; returns the resources, or every problem found.
///
/// Beyond the model's validation it checks what only this machine knows: that the program exists and that
/// fixed ports are not claimed by another App or bound by another process.
pub fn admit(
    store: &Store,
    objects: &[Value],
    in_use: &dyn Fn(&ObjectKey, u16) -> bool,
) -> Result<Vec<Resource>, Vec<AdmissionError>> {
    let mut errors = Vec::new();
    let mut resources = Vec::new();
    for (i, v) in objects.iter().enumerate() {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
        }
        match Resource::from_value(v) {
            Ok(r) => {
                errors.extend(r.validate().into_iter().map(|e| AdmissionError::new(i, e)));
                if let Resource::App(app) = &r {
                    let one_machine = capstan_model::validate::validate_for_one_machine(&app.spec);
                    errors.extend(one_machine.into_iter().map(|e| AdmissionError::new(i, e)));
                }
                if let Resource::AlertRule(rule) = &r {
                    if let Some(e) = check_expr(&rule.spec.expr) {
                        errors.push(AdmissionError::new(i, e));
                    }
                }
                resources.push(r);
            }
            Err(e) => errors.push(AdmissionError::new(i, e)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut seen: HashMap<ObjectKey, usize> = HashMap::new();
    let mut fixed_ports: HashMap<u16, (ObjectKey, usize)> = HashMap::new();
    // Ports claimed by stored Apps that this batch does not replace.
    let batch_keys: Vec<ObjectKey> = resources.iter().map(|r| r.key()).collect();
    // Stored Apps that cannot be read leave the port check undecided: the batch is refused, never let through.
    let stored_apps = match store.list("App", None) {
        Ok(v) => v,
        Err(e) => {
            let e = FieldError::new("", format!("cannot read the stored Apps to check ports: {e}"))
                .hint("the state database could not be read; try again");
            return Err(vec![AdmissionError::new(0, e)]);
        }
    };
    for stored in stored_apps {
        if let Ok(Resource::App(a)) = Resource::from_value(stored) {
            let key = ObjectKey::new("App", a.metadata.namespace(), &a.metadata.name);
            if batch_keys.contains(&key) {
                continue;
            }
            for p in a.spec.ports.iter().filter_map(|p| p.port.filter(|x| *x != 0)) {
                fixed_ports.insert(p, (key.clone(), usize::MAX));
            }
            for e in &a.spec.expose {
                fixed_ports.insert(e.port, (key.clone(), usize::MAX));
            }
        }
    }
    for (i, r) in resources.iter().enumerate() {
        let key = r.key();
        if let Some(first) = seen.insert(key.clone(), i) {
            errors.push(AdmissionError::new(
                i,
                FieldError::new("metadata.name", format!("{key} appears twice in this batch"))
                    .hint(format!("object {first} of the batch has the same kind, namespace and name")),
            ));
        }
        if let Resource::Database(db) = r {
            if let Some(port) = db.spec.port {
                // The Database's own server listening there is no clash.
                let server = ObjectKey::new(
                    "App",
                    db.metadata.namespace(),
                    capstan_model::database::server_app(&db.metadata.name),
                );
                if let Some((other, _)) = fixed_ports.get(&port).filter(|(k, _)| *k != server) {
                    errors.push(AdmissionError::new(
                        i,
                        FieldError::new("spec.port", format!("port {port} is already claimed by {other}"))
                            .hint("pick another port, or leave it out to have one allocated"),
                    ));
                } else if in_use(&server, port) {
                    let who = match capstan_runtime_local::process::listener_of(port) {
                        Some((pid, comm)) => format!("pid {pid} ({comm})"),
                        None => "another process".to_string(),
                    };
                    errors.push(AdmissionError::new(
                        i,
                        FieldError::new("spec.port", format!("port {port} is in use on 127.0.0.1 by {who}"))
                            .hint("pick another port, or leave it out to have one allocated"),
                    ));
                }
            }
        }
        if let Resource::Source(src) = r {
            if let Some(dir) = src.spec.dir.as_deref() {
                let path = capstan_runtime_local::base_dir(&src.metadata).join(dir);
                if !path.is_dir() {
                    errors.push(AdmissionError::new(
                        i,
                        FieldError::new("spec.dir", format!("directory {} does not exist", path.display()))
                            .hint("relative paths start at the manifest's directory"),
                    ));
                }
            }
        }
        let Resource::App(app) = r else { continue };
        let cwd = working_dir(app);
        if !cwd.is_dir() {
            errors.push(AdmissionError::new(
                i,
                FieldError::new("spec.run.workingDir", format!("directory {} does not exist", cwd.display()))
                    .hint("relative paths start at the manifest's directory"),
            ));
        } else if let Some(program) = app.spec.run.command.first() {
            let path = search_path(app);
            if let Err(msg) = resolve_program(program, &cwd, &path) {
                let hint = if program.contains('/') {
                    format!("relative paths start at {}; build the program first or fix the path", cwd.display())
                } else {
                    "install it, give its full path, or set spec.run.env.PATH".to_string()
                };
                errors.push(AdmissionError::new(i, FieldError::new("spec.run.command[0]", msg.to_string()).hint(hint)));
            }
        } else if app.spec.run.image.is_some() {
            errors.push(AdmissionError::new(
                i,
                FieldError::new(
                    "spec.run.command",
                    "the embedded runtime needs a command; this App only names an image",
                )
                .hint("add `command:` to run it here, or apply it to Kubernetes"),
            ));
        }
        let claimed = app
            .spec
            .ports
            .iter()
            .enumerate()
            .filter_map(|(pi, p)| p.port.filter(|x| *x != 0).map(|port| (format!("spec.ports[{pi}].port"), port)))
            .chain(app.spec.expose.iter().enumerate().map(|(ei, e)| (format!("spec.expose[{ei}].port"), e.port)));
        for (path, port) in claimed {
            if let Some((other, _)) = fixed_ports.get(&port).filter(|(k, _)| *k != key) {
                errors.push(AdmissionError::new(
                    i,
                    FieldError::new(path, format!("port {port} is already claimed by {other}"))
                        .hint("pick another port, or leave it out to have one allocated"),
                ));
                continue;
            }
            fixed_ports.insert(port, (key.clone(), i));
            if in_use(&key, port) {
                errors.push(AdmissionError::new(
                    i,
                    FieldError::new(
                        path,
                        match capstan_runtime_local::process::listener_of(port) {
                            Some((pid, comm)) => format!("port {port} is in use on 127.0.0.1 by pid {pid} ({comm})"),
                            None => format!("port {port} is in use by another process on 127.0.0.1"),
                        },
                    )
                    .hint("stop what listens there (see `ss -ltnp`), pick another port, or leave it out"),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}
