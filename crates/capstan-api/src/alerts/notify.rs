//! Notifications: the outbox delivered with retries and backoff, and the notifiers — webhooks (Alertmanager's v4
//! payload), an Alertmanager's API, commands and email.

use super::*;

/// Why a notification was not delivered; the text is the delivery's `lastError`.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotifyError {
    /// The request did not get an answer; `cause` has reqwest's chain of causes, without the URL's path.
    #[error("{origin}: {cause}")]
    Unreachable { origin: String, cause: String },
    /// The target answered with something other than 2xx.
    #[error("{origin} answered {status}: {body}")]
    Answered { origin: String, status: reqwest::StatusCode, body: String },
    #[error("empty command")]
    EmptyCommand,
    #[error("{program}: {source}")]
    Command { program: String, source: std::io::Error },
    #[error("{program} ran longer than 30s")]
    CommandTimeout { program: String },
    #[error("{program} exited with {status}: {stderr}")]
    CommandFailed { program: String, status: std::process::ExitStatus, stderr: String },
    #[error("smarthost needs host:port")]
    SmarthostWithoutPort,
    #[error("bad port in {smarthost}")]
    SmarthostPort { smarthost: String },
    #[error("from: {0}")]
    Sender(lettre::address::AddressError),
    #[error("to {to}: {source}")]
    Recipient { to: String, source: lettre::address::AddressError },
    #[error("{0}")]
    Message(lettre::error::Error),
    #[error("smtp {smarthost}: {source}")]
    Smtp { smarthost: String, source: lettre::transport::smtp::Error },
}

/// The Alertmanager webhook payload (version 4), with Capstan's incident alongside.
pub(super) fn payload(i: &Incident, n: &Notification, external_url: &str, now: i64) -> Value {
    let resolved = i.state == IncidentState::Resolved;
    let alerts: Vec<Value> = i
        .alerts
        .iter()
        .map(|a| {
            let ended = resolved || a.state == State::Inactive;
            let ends = if ended { a.resolved_at.or(i.resolved_at).unwrap_or(now) } else { now + 4 * 60_000 };
            json!({
                "status": if ended { "resolved" } else { "firing" },
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.active_at),
                "endsAt": if ended || matches!(n.target, NotifyTarget::Alertmanager { .. }) { rfc3339(ends) } else { "0001-01-01T00:00:00Z".to_string() },
                "generatorURL": a.generator_url,
                "fingerprint": fingerprint(&a.labels),
            })
        })
        .collect();
    let common = |f: &dyn Fn(&Alert) -> &BTreeMap<String, String>| -> BTreeMap<String, String> {
        let mut it = i.alerts.iter();
        let Some(first) = it.next() else { return BTreeMap::new() };
        let mut c = f(first).clone();
        for a in it {
            c.retain(|k, v| f(a).get(k) == Some(v));
        }
        c
    };
    json!({
        "version": "4",
        "groupKey": format!("{}:{}", i.policy, serde_json::to_string(&i.group).unwrap_or_default()),
        "truncatedAlerts": 0,
        "status": if resolved { "resolved" } else { "firing" },
        "receiver": format!("{}/level-{}", i.policy, n.level + 1),
        "groupLabels": i.group,
        "commonLabels": common(&|a| &a.labels),
        "commonAnnotations": common(&|a| &a.annotations),
        "externalURL": external_url,
        "alerts": alerts,
        "incident": { "id": i.id, "state": i.state.as_str(), "level": n.level + 1, "reason": n.reason },
    })
}

pub(super) fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Sends what is due; failures are retried with backoff (1 s doubling to 5 minutes) for a day.
pub(super) async fn deliver(store: &Store, alerting: &Alerting, client: &reqwest::Client, now: i64) {
    let due: Vec<Delivery> =
        lock(&alerting.deliveries).values().filter(|d| !d.failed && d.next_at <= now).take(16).cloned().collect();
    let sends = due.into_iter().map(|d| async move {
        let r = send(client, &d).await;
        (d, r)
    });
    for (mut d, r) in futures_util::future::join_all(sends).await {
        match r {
            Ok(()) => {
                lock(&alerting.deliveries).remove(&d.id);
                let _ = store.delete_record(&format!("delivery/{}", d.id));
            }
            Err(e) => {
                d.attempts += 1;
                let backoff = (1_000i64 << d.attempts.min(9)).min(300_000);
                d.next_at = now + backoff;
                if now - d.created_at > GIVE_UP_MS {
                    d.failed = true;
                }
                tracing::warn!(delivery = %d.id, attempts = d.attempts, "notification failed: {e}");
                d.last_error = Some(e.to_string());
                if let Ok(v) = serde_json::to_value(&d) {
                    let _ = store.put_record(&format!("delivery/{}", d.id), &v);
                }
                lock(&alerting.deliveries).insert(d.id.clone(), d);
            }
        }
    }
}

/// Scheme, host and port of a URL: what errors may show (a webhook's path often holds its token, as Slack's do).
pub(super) fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match u.port() {
            Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or("")),
            None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
        },
        Err(_) => "the target".into(),
    }
}

/// POSTs a JSON body; anything but a 2xx answer is a failure, with the answer's text.
pub(super) async fn post_json(client: &reqwest::Client, url: &str, body: String) -> Result<(), NotifyError> {
    let r = client.post(url).header("Content-Type", "application/json").body(body).send().await.map_err(|e| {
        NotifyError::Unreachable { origin: origin(url), cause: capstan_engine::errors::with_causes(&e.without_url()) }
    })?;
    let status = r.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = r.text().await.unwrap_or_default().trim().to_string();
        Err(NotifyError::Answered { origin: origin(url), status, body })
    }
}

pub(super) async fn send(client: &reqwest::Client, d: &Delivery) -> Result<(), NotifyError> {
    match &d.target {
        NotifyTarget::Webhook { url } => post_json(client, url, d.payload.to_string()).await,
        NotifyTarget::Alertmanager { url } => {
            let alerts: Vec<Value> = d.payload["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| json!({"labels": a["labels"], "annotations": a["annotations"], "startsAt": a["startsAt"], "endsAt": a["endsAt"], "generatorURL": a["generatorURL"]}))
                .collect();
            let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            post_json(client, &endpoint, Value::Array(alerts).to_string()).await
        }
        NotifyTarget::Command { command } => {
            use tokio::io::AsyncWriteExt;
            let (prog, args) = command.split_first().ok_or(NotifyError::EmptyCommand)?;
            let failed = |source| NotifyError::Command { program: prog.clone(), source };
            let mut child = tokio::process::Command::new(prog)
                .args(args)
                .env("CAPSTAN_INCIDENT_ID", &d.incident)
                .env("CAPSTAN_INCIDENT_STATE", d.payload["incident"]["state"].as_str().unwrap_or(""))
                .env("CAPSTAN_INCIDENT_REASON", d.payload["incident"]["reason"].as_str().unwrap_or(""))
                .env("CAPSTAN_INCIDENT_LEVEL", d.payload["incident"]["level"].to_string())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(failed)?;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(d.payload.to_string().as_bytes()).await;
            }
            let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| NotifyError::CommandTimeout { program: prog.clone() })?
                .map_err(failed)?;
            if out.status.success() {
                Ok(())
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                Err(NotifyError::CommandFailed { program: prog.clone(), status: out.status, stderr })
            }
        }
        NotifyTarget::Email { to, from, smarthost } => send_mail(smarthost, from, to, d).await,
    }
}

/// Plain SMTP to a relay, as Alertmanager's email receiver without TLS.
pub(super) async fn send_mail(smarthost: &str, from: &str, to: &[String], d: &Delivery) -> Result<(), NotifyError> {
    use lettre::message::Mailbox;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let (host, port) = smarthost.rsplit_once(':').ok_or(NotifyError::SmarthostWithoutPort)?;
    let port: u16 = port.parse().map_err(|_| NotifyError::SmarthostPort { smarthost: smarthost.to_string() })?;
    let status = d.payload["status"].as_str().unwrap_or("firing");
    let subject = format!(
        "[{}] {} {}",
        status.to_uppercase(),
        d.payload["incident"]["id"].as_str().unwrap_or(""),
        serde_json::to_string(&d.payload["groupLabels"]).unwrap_or_default()
    );
    let mut body = String::new();
    for a in d.payload["alerts"].as_array().into_iter().flatten() {
        body.push_str(&format!("{} {}\n", a["status"].as_str().unwrap_or(""), a["labels"]));
        if let Some(s) = a["annotations"]["summary"].as_str() {
            body.push_str(&format!("  {s}\n"));
        }
    }
    let mut msg = Message::builder().from(from.parse::<Mailbox>().map_err(NotifyError::Sender)?).subject(subject);
    for t in to {
        msg = msg.to(t.parse::<Mailbox>().map_err(|source| NotifyError::Recipient { to: t.clone(), source })?);
    }
    let msg = msg.body(body).map_err(NotifyError::Message)?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port).build();
    mailer.send(msg).await.map(|_| ()).map_err(|source| NotifyError::Smtp { smarthost: smarthost.to_string(), source })
}
