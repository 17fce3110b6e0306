//! Semantic validation: names, labels and every App field, reported as field paths with hints.

use std::collections::BTreeSet;

use crate::app::{AppSpec, PortRef, Probe};
use crate::meta::ObjectMeta;
use crate::quantity::{parse_bytes, parse_millicpu};

/// One problem with one field of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, as `spec.ports[0].name`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Checks a DNS-1123 label of at most `max` characters.
pub fn check_dns_label(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > max {
        return Err(format!("`{value}` is {} characters long; the limit is {max}", value.len()));
    }
    let ok_chars = value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok_ends = !value.starts_with('-') && !value.ends_with('-');
    if !ok_chars || !ok_ends {
        return Err(format!(
            "`{value}` is not a DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn suggest_label(value: &str) -> String {
    let mut s: String =
        value.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

/// Longest object name: leaves room for `-<ordinal>` within 63 characters.
pub const MAX_NAME: usize = 53;

/// Validates the user-written part of metadata.
pub fn validate_meta(meta: &ObjectMeta, errors: &mut Vec<FieldError>) {
    if let Err(e) = check_dns_label(&meta.name, MAX_NAME) {
        let hint = match suggest_label(&meta.name) {
            s if s.is_empty() || s == meta.name => "for example `my-app`".to_string(),
            s => format!("try `{}`", &s[..s.len().min(MAX_NAME)]),
        };
        errors.push(FieldError::new("metadata.name", e).hint(hint));
    }
    if let Some(ns) = &meta.namespace {
        if let Err(e) = check_dns_label(ns, 63) {
            errors.push(FieldError::new("metadata.namespace", e).hint("for example `team-a`"));
        }
    }
    for (k, v) in &meta.labels {
        let path = format!("metadata.labels.{k}");
        if let Err(e) = check_label_key(k) {
            errors.push(FieldError::new(&path, e));
        }
        let ok = v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && (v.is_empty()
                || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && v.ends_with(|c: char| c.is_ascii_alphanumeric())));
        if !ok {
            errors.push(
                FieldError::new(&path, format!("label value `{v}` is not valid"))
                    .hint("at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
            );
        }
    }
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !p.split('.').all(|l| check_dns_label(l, 63).is_ok()) {
            return Err(format!("label key prefix `{p}` must be a DNS subdomain such as `example.com`"));
        }
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(format!(
            "label key `{key}` must be at most 63 letters, digits, '-', '_' or '.', optionally behind a `prefix/`"
        ));
    }
    Ok(())
}

fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The environment variable name for a named port: `PORT_` and the upper-cased name, '-' as '_'.
pub fn port_env_name(port_name: &str) -> String {
    format!("PORT_{}", port_name.to_ascii_uppercase().replace('-', "_"))
}

/// The metrics endpoint: a known port, an absolute path, a scheme Prometheus knows, timeout within interval.
fn validate_metrics(spec: &AppSpec, errors: &mut Vec<FieldError>) {
    let Some(m) = &spec.metrics else { return };
    match &m.port {
        Some(PortRef::Name(n)) if !spec.ports.iter().any(|p| &p.name == n) => errors.push(
            FieldError::new("spec.metrics.port", format!("no port named `{n}` in spec.ports"))
                .hint("name one of spec.ports, or give a number"),
        ),
        None if spec.ports.is_empty() => errors.push(
            FieldError::new("spec.metrics.port", "is required when the App has no ports")
                .hint("add a port to spec.ports, or give `port: 9100`"),
        ),
        _ => {}
    }
    if !m.path.starts_with('/') {
        errors.push(
            FieldError::new("spec.metrics.path", format!("`{}` must start with /", m.path))
                .hint("for example `/metrics`"),
        );
    }
    if m.scheme != "http" && m.scheme != "https" {
        errors.push(FieldError::new("spec.metrics.scheme", format!("`{}` is not http or https", m.scheme)));
    }
    let interval = crate::quantity::parse_duration(&m.interval);
    let timeout = crate::quantity::parse_duration(&m.effective_timeout());
    if let Err(e) = &interval {
        errors.push(FieldError::new("spec.metrics.interval", e.clone()).hint("for example `15s`"));
    }
    if let Err(e) = &timeout {
        errors.push(FieldError::new("spec.metrics.timeout", e.clone()).hint("for example `10s`"));
    }
    if let (Ok(i), Ok(t)) = (interval, timeout) {
        if t > i {
            errors.push(
                FieldError::new(
                    "spec.metrics.timeout",
                    format!("{} is longer than the interval {}", m.effective_timeout(), m.interval),
                )
                .hint("Prometheus requires scrape_timeout ≤ scrape_interval"),
            );
        }
    }
}

/// Volumes: unique DNS-label names, unique environment variables that Capstan does not set itself, sizes.
fn validate_volumes(spec: &AppSpec, errors: &mut Vec<FieldError>) {
    let mut names = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let at = |f: &str| format!("spec.volumes[{i}].{f}");
        if let Err(e) = check_dns_label(&v.name, 63) {
            errors.push(FieldError::new(at("name"), e).hint(format!("for example `{}`", suggest_label(&v.name))));
        }
        if !names.insert(v.name.as_str()) {
            errors.push(FieldError::new(at("name"), format!("volume `{}` is declared twice", v.name)));
        }
        if !is_env_name(&v.env) {
            errors.push(
                FieldError::new(at("env"), format!("`{}` is not a valid environment variable name", v.env))
                    .hint("for example `DATA_DIR`"),
            );
        } else if v.env == "PORT" || v.env.starts_with("PORT_") || v.env.starts_with("CAPSTAN_") {
            errors.push(
                FieldError::new(at("env"), format!("`{}` is set by Capstan itself", v.env))
                    .hint("pick another name, such as `DATA_DIR`"),
            );
        } else if spec.run.env.contains_key(&v.env) {
            errors.push(
                FieldError::new(at("env"), format!("`{}` is also set in spec.run.env", v.env))
                    .hint("the volume sets it; remove it from spec.run.env"),
            );
        }
        if !envs.insert(v.env.as_str()) {
            errors.push(FieldError::new(at("env"), format!("`{}` is used by two volumes", v.env)));
        }
        if let Some(size) = &v.size {
            if let Err(e) = parse_bytes(size) {
                errors.push(FieldError::new(at("size"), e).hint("for example `10Gi`"));
            }
        }
    }
}

/// Validates an App's spec.
/// What only one machine forbids: replicas sharing a fixed port. The embedded runtime's admission checks it; on
/// Kubernetes each pod has its own address, so a rendering does not.
pub fn validate_for_one_machine(spec: &AppSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if let Some(port) = p.port.filter(|p| *p != 0 && spec.replicas > 1) {
            errors.push(
                FieldError::new(
                    format!("spec.ports[{i}].port"),
                    format!("fixed port {port} cannot be shared by {} replicas on one machine", spec.replicas),
                )
                .hint("remove `port` so each replica gets its own, or run one replica"),
            );
        }
    }
    errors
}

pub fn validate_app(spec: &AppSpec, errors: &mut Vec<FieldError>) {
    if spec.replicas < 0 {
        errors.push(
            FieldError::new("spec.replicas", format!("must not be negative (got {})", spec.replicas))
                .hint("use 0 to stop every replica while keeping the App"),
        );
    } else if spec.replicas > 1000 {
        errors.push(
            FieldError::new("spec.replicas", format!("{} replicas is more than the limit of 1000", spec.replicas))
                .hint("one machine rarely runs more; use the Kubernetes runtime for large fleets"),
        );
    }
    if spec.run.command.is_empty() && spec.run.image.is_none() {
        errors.push(
            FieldError::new("spec.run.command", "is required")
                .hint("name the program to run, for example `command: [./server, --verbose]`"),
        );
    }
    if spec.run.command.first().is_some_and(|c| c.trim().is_empty()) {
        errors.push(FieldError::new("spec.run.command[0]", "the program name is empty"));
    }
    for k in spec.run.env.keys() {
        if !is_env_name(k) {
            errors.push(
                FieldError::new(format!("spec.run.env.{k}"), format!("`{k}` is not a valid environment variable name"))
                    .hint("use letters, digits and '_', not starting with a digit"),
            );
        }
    }
    validate_volumes(spec, errors);
    validate_metrics(spec, errors);
    if let Some(sig) = &spec.run.stop_signal {
        if !crate::app::STOP_SIGNALS.contains(&sig.as_str()) {
            errors.push(
                FieldError::new("spec.run.stopSignal", format!("`{sig}` is not a stop signal Capstan sends"))
                    .hint(format!("one of: {}", crate::app::STOP_SIGNALS.join(", "))),
            );
        }
    }
    if let Some(r) = &spec.database_ref {
        if let Err(e) = check_dns_label(&r.name, 63) {
            errors.push(FieldError::new("spec.databaseRef.name", e));
        }
        if !is_env_name(&r.env) {
            errors.push(FieldError::new(
                "spec.databaseRef.env",
                format!("`{}` is not a valid environment variable name", r.env),
            ));
        }
    }
    if let Some(user) = &spec.run.user {
        if user.is_empty() || user.contains(|c: char| c.is_whitespace() || c == ':' || c == '/') {
            errors.push(FieldError::new("spec.run.user", format!("`{user}` is not a user name")));
        }
    }

    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if let Err(e) = check_dns_label(&p.name, 15) {
            errors.push(FieldError::new(format!("{path}.name"), e).hint("for example `http` or `admin`"));
        }
        if !names.insert(p.name.as_str()) {
            errors.push(
                FieldError::new(format!("{path}.name"), format!("port name `{}` is used twice", p.name))
                    .hint("each port needs its own name"),
            );
        }
        if let Some(proto) = &p.app_protocol {
            // Kubernetes' rule: an IANA service name, or a domain-prefixed name such as `kubernetes.io/h2c`.
            let ok = !proto.is_empty()
                && proto.len() <= 63 + 254
                && proto.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/' | '_'));
            if !ok {
                errors.push(
                    FieldError::new(format!("{path}.appProtocol"), format!("`{proto}` is not a protocol name"))
                        .hint("for example `kubernetes.io/h2c` (HTTP/2 without TLS, gRPC), `http` or `https`"),
                );
            }
        }
        if let Some(port) = p.port.filter(|p| *p != 0) {
            if port < 1024 {
                errors.push(
                    FieldError::new(format!("{path}.port"), format!("port {port} is privileged"))
                        .hint("use a port from 1024 up, or leave it out to have one allocated"),
                );
            }
        }
    }

    let probes =
        [("startup", &spec.probes.startup), ("readiness", &spec.probes.readiness), ("liveness", &spec.probes.liveness)];
    for (name, probe) in probes {
        if let Some(p) = probe {
            validate_probe(name, p, spec, errors);
        }
    }

    if let Some(b) = &spec.restart_backoff {
        if !(b.initial_seconds.is_finite() && b.initial_seconds >= 0.0) {
            errors.push(FieldError::new("spec.restartBackoff.initialSeconds", "must be 0 or more"));
        }
        if !(b.max_seconds.is_finite() && b.max_seconds >= b.initial_seconds) {
            errors.push(
                FieldError::new("spec.restartBackoff.maxSeconds", "must be at least initialSeconds")
                    .hint("for example initialSeconds: 1, maxSeconds: 60"),
            );
        }
        if !(b.reset_after_seconds.is_finite() && b.reset_after_seconds >= 0.0) {
            errors.push(FieldError::new("spec.restartBackoff.resetAfterSeconds", "must be 0 or more"));
        }
    }

    if let Some(r) = &spec.resources {
        if let Some(m) = &r.memory {
            match parse_bytes(m) {
                Ok(b) if b < 1 << 20 => errors.push(
                    FieldError::new("spec.resources.memory", format!("`{m}` is less than 1Mi"))
                        .hint("did you mean Mi, as in 512Mi?"),
                ),
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new("spec.resources.memory", e)),
            }
        }
        if let Some(c) = &r.cpu {
            if let Err(e) = parse_millicpu(c) {
                errors.push(FieldError::new("spec.resources.cpu", e));
            }
        }
    }

    validate_expose(spec, errors);

    if let Some(l) = &spec.logs {
        match parse_bytes(&l.max_size) {
            Ok(b) if b < 4096 => errors.push(FieldError::new("spec.logs.maxSize", "must be at least 4Ki")),
            Ok(_) => {}
            Err(e) => errors.push(FieldError::new("spec.logs.maxSize", e)),
        }
        if l.max_files < 2 || l.max_files > 100 {
            errors.push(
                FieldError::new("spec.logs.maxFiles", "must be between 2 and 100")
                    .hint("it counts every file, the current one included, as the kubelet's containerLogMaxFiles"),
            );
        }
    }
}

fn validate_expose(spec: &AppSpec, errors: &mut Vec<FieldError>) {
    use crate::app::{ExposeProtocol, UpdateStrategy};
    let mut seen_names = BTreeSet::new();
    let mut seen_binds = BTreeSet::new();
    for (i, e) in spec.expose.iter().enumerate() {
        let path = format!("spec.expose[{i}]");
        if e.port == 0 {
            errors.push(
                FieldError::new(format!("{path}.port"), "must be set")
                    .hint("the port clients connect to, such as 8080"),
            );
        }
        if let Some(g) = &e.gateway {
            if g.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                errors.push(
                    FieldError::new(format!("{path}.gateway.name"), "empty")
                        .hint("the Gateway's name, or leave it out for the cluster's default Gateway"),
                );
            }
            if g.namespace.is_some() && g.name.is_none() {
                errors.push(
                    FieldError::new(format!("{path}.gateway.namespace"), "is given without a name")
                        .hint("name the Gateway too, or leave both out for the cluster's default Gateway"),
                );
            }
            for (j, h) in g.hostnames.iter().enumerate() {
                if let Err(e) = crate::gateway::check_hostname(h) {
                    errors.push(FieldError::new(format!("{path}.gateway.hostnames[{j}]"), e));
                }
            }
            if e.protocol == ExposeProtocol::Tcp && !g.hostnames.is_empty() {
                errors.push(
                    FieldError::new(format!("{path}.gateway.hostnames"), "do not apply to a tcp entry point")
                        .hint("a TCPRoute takes every connection on its listener: remove them, or name a listener with `sectionName`"),
                );
            }
        }
        if let Some(a) = &e.address {
            if a.parse::<std::net::IpAddr>().is_err() {
                errors.push(
                    FieldError::new(format!("{path}.address"), format!("`{a}` is not an IP address"))
                        .hint("for example 127.0.0.1, ::1 or 0.0.0.0"),
                );
            }
        }
        let name = e.name.clone().unwrap_or_else(|| format!("{:?}-{}", e.protocol, e.port).to_ascii_lowercase());
        if let Some(n) = &e.name {
            if let Err(msg) = check_dns_label(n, 63) {
                errors.push(FieldError::new(format!("{path}.name"), msg));
            }
        }
        if !seen_names.insert(name.clone()) {
            errors.push(FieldError::new(format!("{path}.name"), format!("entry point `{name}` is declared twice")));
        }
        if !seen_binds.insert((e.address.clone(), e.port)) {
            errors.push(
                FieldError::new(format!("{path}.port"), format!("port {} is used by two entry points", e.port))
                    .hint("each entry point needs its own port"),
            );
        }
        match &e.target_port {
            Some(PortRef::Name(n)) if !spec.ports.iter().any(|p| &p.name == n) => {
                let known: Vec<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
                let hint = match crate::manifest::closest(n, &known) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "name a port from spec.ports".into(),
                };
                errors.push(
                    FieldError::new(format!("{path}.targetPort"), format!("names unknown port `{n}`")).hint(hint),
                );
            }
            None if spec.ports.is_empty() => errors.push(
                FieldError::new(format!("{path}.targetPort"), "the App declares no port to send traffic to")
                    .hint("add `ports: [{name: http}]` or set targetPort"),
            ),
            _ => {}
        }
        if let Some(st) = &e.sticky {
            match (&st.cookie, &st.client_ip) {
                (Some(_), Some(_)) | (None, None) => errors.push(
                    FieldError::new(format!("{path}.sticky"), "needs exactly one of cookie or clientIP")
                        .hint("for example `sticky: {cookie: {name: ROUTE}}`"),
                ),
                (Some(_), None) if e.protocol == ExposeProtocol::Tcp => errors.push(
                    FieldError::new(format!("{path}.sticky.cookie"), "a TCP entry point cannot read cookies")
                        .hint("use `clientIP` stickiness for protocol: tcp"),
                ),
                (Some(c), None) => {
                    let ok = !c.name.is_empty()
                        && c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
                    if !ok {
                        errors.push(
                            FieldError::new(
                                format!("{path}.sticky.cookie.name"),
                                format!("`{}` is not a cookie name", c.name),
                            )
                            .hint("use letters, digits, '_', '-' and '.'"),
                        );
                    }
                }
                _ => {}
            }
        }
        if let Err(msg) = parse_bytes(&e.max_body_size) {
            errors.push(FieldError::new(format!("{path}.maxBodySize"), msg));
        }
        if e.max_connections == Some(0) {
            errors.push(
                FieldError::new(format!("{path}.maxConnections"), "must be at least 1")
                    .hint("leave it out to share Capstan's connection budget without a cap of its own"),
            );
        }
        if e.timeouts.connect_seconds == 0 || e.timeouts.request_seconds == 0 {
            errors.push(FieldError::new(format!("{path}.timeouts"), "timeouts must be at least 1 second"));
        }
    }
    let u = &spec.update;
    if u.max_unavailable == 0 && u.strategy == UpdateStrategy::Ordered {
        errors.push(
            FieldError::new("spec.update.maxUnavailable", "must be at least 1 for an Ordered update")
                .hint("use strategy: Surge to keep every replica available during updates"),
        );
    }
    if u.max_surge == 0 && u.strategy == UpdateStrategy::Surge {
        errors.push(FieldError::new("spec.update.maxSurge", "must be at least 1 for a Surge update"));
    }
    if u.progress_deadline_seconds <= u.min_ready_seconds {
        errors.push(
            FieldError::new("spec.update.progressDeadlineSeconds", "must be greater than minReadySeconds")
                .hint("as in Kubernetes, or no update could ever finish in time"),
        );
    }
}

fn validate_probe(name: &str, p: &Probe, spec: &AppSpec, errors: &mut Vec<FieldError>) {
    let path = format!("spec.probes.{name}");
    let handlers = [p.http.is_some(), p.tcp.is_some(), p.exec.is_some()].iter().filter(|h| **h).count();
    if handlers != 1 {
        errors.push(
            FieldError::new(&path, format!("needs exactly one of http, tcp or exec (found {handlers})"))
                .hint("for example `http: {path: /status, port: http}`"),
        );
    }
    let check_port = |field: String, port: &PortRef, errors: &mut Vec<FieldError>| match port {
        PortRef::Name(n) if !spec.ports.iter().any(|p| &p.name == n) => {
            let known: Vec<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
            let hint = match crate::manifest::closest(n, &known) {
                Some(s) => format!("did you mean `{s}`?"),
                None if known.is_empty() => "declare it in spec.ports, e.g. `ports: [{name: http}]`".into(),
                None => format!("declared ports: {}", known.join(", ")),
            };
            errors.push(FieldError::new(field, format!("names unknown port `{n}`")).hint(hint));
        }
        PortRef::Number(0) => {
            errors.push(FieldError::new(field, "port 0 cannot be probed").hint("name a port from spec.ports"))
        }
        _ => {}
    };
    if let Some(h) = &p.http {
        check_port(format!("{path}.http.port"), &h.port, errors);
        if !h.path.starts_with('/') {
            errors.push(
                FieldError::new(format!("{path}.http.path"), format!("`{}` must start with '/'", h.path))
                    .hint(format!("try `/{}`", h.path)),
            );
        }
    }
    if let Some(t) = &p.tcp {
        check_port(format!("{path}.tcp.port"), &t.port, errors);
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            errors.push(FieldError::new(format!("{path}.exec.command"), "must not be empty"));
        }
    }
    if p.period_seconds == 0 {
        errors.push(FieldError::new(format!("{path}.periodSeconds"), "must be at least 1"));
    }
    if p.timeout_seconds == 0 {
        errors.push(FieldError::new(format!("{path}.timeoutSeconds"), "must be at least 1"));
    }
    if p.failure_threshold == 0 {
        errors.push(FieldError::new(format!("{path}.failureThreshold"), "must be at least 1"));
    }
    if p.success_threshold == 0 {
        errors.push(FieldError::new(format!("{path}.successThreshold"), "must be at least 1"));
    } else if p.success_threshold != 1 && name != "readiness" {
        errors.push(
            FieldError::new(format!("{path}.successThreshold"), format!("must be 1 for a {name} probe"))
                .hint("as in Kubernetes, only readiness probes may need several successes"),
        );
    }
}
