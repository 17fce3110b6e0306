//! Alert rules and escalation end to end: a rule over scraped metrics fires; its incident reaches a webhook
//! (Alertmanager's v4 payload), a real Alertmanager (Debian's) and a command; unacknowledged, it escalates to
//! the next level; an acknowledgement stops it; it resolves when the condition ends; a notifier that is down is
//! retried and its delivery survives a restart of Capstan. Escalation timing is covered with chosen clocks in
//! `capstan_observe::escalation`'s unit tests.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use capstan_e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

type Inbox = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on 127.0.0.1 that keeps every payload by path.
async fn receiver() -> (u16, Inbox) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    receiver_on(l)
}

/// The same receiver on a given listener.
fn receiver_on(l: tokio::net::TcpListener) -> (u16, Inbox) {
    let inbox: Inbox = Arc::default();
    let app = Router::new()
        .route(
            "/{path}",
            post(|State(i): State<Inbox>, Path(p): Path<String>, Json(v): Json<Value>| async move {
                i.lock().expect("inbox").push((p, v));
                "ok"
            }),
        )
        .with_state(inbox.clone());
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (port, inbox)
}

fn received(inbox: &Inbox, path: &str, status: &str) -> Vec<Value> {
    inbox
        .lock()
        .expect("inbox")
        .iter()
        .filter(|(p, v)| p == path && v["status"] == status)
        .map(|(_, v)| v.clone())
        .collect()
}

async fn incidents(tp: &TestPlane) -> Vec<Value> {
    tp.client.get("/api/v1/incidents?all=true").await.expect("incidents")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_rule_notifies_escalates_until_acknowledged_and_resolves() {
    if !heavy("Alertmanager (Debian's prometheus-alertmanager)") {
        return;
    }
    let tp = TestPlane::start().await;
    let (hook, inbox) = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // A real Alertmanager with a receiver that drops everything: Capstan's alerts show in its API.
    let am_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let cluster_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    std::fs::write(dir.path().join("am.yml"), "route: {receiver: devnull}\nreceivers: [{name: devnull}]\n")
        .expect("config");
    let am = Command::new("/usr/bin/prometheus-alertmanager")
        .arg(format!("--config.file={}", dir.path().join("am.yml").display()))
        .arg(format!("--storage.path={}", dir.path().join("am").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg(format!("--cluster.listen-address=127.0.0.1:{cluster_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("alertmanager starts (scripts/test.sh installs Debian's prometheus-alertmanager)");
    let _am = Guarded(am);
    let out_file = dir.path().join("command-payloads");

    let metrics = "  metrics: {port: http, interval: 1s, timeout: 1s}\n";
    tp.apply(&app_yaml("shop", 1, &[], &format!("{READINESS}{metrics}")));
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1
kind: AlertRule
metadata: {{name: shop-replica-up}}
spec:
  alert: ShopReplicaUp
  expr: testapp_info{{app=\"shop\"}} == 1
  labels: {{severity: page, team: web}}
  annotations: {{summary: \"{{{{ $labels.replica }}}} answers\"}}
  interval: 1s
---
apiVersion: capstan.dev/v1alpha1
kind: EscalationPolicy
metadata: {{name: web-oncall}}
spec:
  match: {{team: web}}
  groupBy: [alertname]
  levels:
    - targets:
        - webhook: {{url: \"http://127.0.0.1:{hook}/oncall\"}}
        - alertmanager: {{url: \"http://127.0.0.1:{am_port}\"}}
      after: 3s
    - targets:
        - webhook: {{url: \"http://127.0.0.1:{hook}/team\"}}
        - command: {{command: [/bin/sh, -c, \"cat >> {}\"]}}
      after: 3s
",
        out_file.display()
    ));

    // Level 1 hears of it with Alertmanager's webhook payload.
    let first = eventually("the on-call webhook is called", T, || async {
        received(&inbox, "oncall", "firing").into_iter().next()
    })
    .await;
    assert_eq!(first["version"], "4");
    assert_eq!(first["groupLabels"], json!({"alertname": "ShopReplicaUp"}));
    assert_eq!(first["alerts"][0]["labels"]["replica"], "shop-0");
    assert_eq!(first["alerts"][0]["labels"]["severity"], "page");
    assert_eq!(first["alerts"][0]["annotations"]["summary"], "shop-0 answers");
    assert_eq!(first["incident"]["reason"], "triggered");
    let id = first["incident"]["id"].as_str().expect("incident id").to_string();

    // The real Alertmanager holds the alert.
    let am_alerts = eventually("Alertmanager received the alert", T, || async {
        let (code, body) = http_get(am_port, "/api/v2/alerts").await?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v.as_array().is_some_and(|a| !a.is_empty())).then_some(v)
    })
    .await;
    assert_eq!(am_alerts[0]["labels"]["alertname"], "ShopReplicaUp");
    assert_eq!(am_alerts[0]["status"]["state"], "active");

    // The rule's status and the ALERTS series.
    let rule = tp.client.get("/api/v1/namespaces/default/alertrules/shop-replica-up").await.expect("rule");
    assert_eq!(rule["status"]["health"], "ok");
    assert_eq!(rule["status"]["alerts"][0]["state"], "firing");

    // Unacknowledged for 3 s: level 2 (a webhook and a command) is told.
    let escalated =
        eventually("escalated to the team", T, || async { received(&inbox, "team", "firing").into_iter().next() })
            .await;
    assert_eq!(escalated["incident"]["reason"], "escalated");
    assert_eq!(escalated["incident"]["level"], 2);
    eventually("the command got the payload", T, || async {
        let text = std::fs::read_to_string(&out_file).ok()?;
        text.contains("ShopReplicaUp").then_some(())
    })
    .await;

    // Acknowledged: no more escalation.
    let acked = tp.client.post(&format!("/api/v1/incidents/{id}/acknowledge"), json!({"by": "alice"})).await;
    assert!(acked.is_ok(), "{acked:?}");
    let again = tp.client.post(&format!("/api/v1/incidents/{id}/acknowledge"), json!({"by": "bob"})).await;
    assert!(again.is_err(), "acknowledging twice is refused");
    let told = inbox.lock().expect("inbox").len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after: Vec<String> =
        inbox.lock().expect("inbox")[told..].iter().map(|(p, v)| format!("{p}:{}", v["incident"]["reason"])).collect();
    assert!(after.iter().all(|x| !x.contains("escalated")), "no escalation after the acknowledgement: {after:?}");
    let i = incidents(&tp).await;
    assert_eq!(i[0]["state"], "acknowledged");
    assert_eq!(i[0]["acknowledgedBy"], "alice");

    // The condition ends (the App is scaled to zero): the incident resolves and both levels hear of it.
    tp.apply(&app_yaml("shop", 0, &[], &format!("{READINESS}{metrics}")));
    eventually("resolved notifications", T, || async {
        (!received(&inbox, "oncall", "resolved").is_empty() && !received(&inbox, "team", "resolved").is_empty())
            .then_some(())
    })
    .await;
    let i = incidents(&tp).await;
    assert_eq!(i[0]["state"], "resolved");
    assert!(i[0]["log"].as_array().is_some_and(|l| l.iter().any(|e| e["message"] == "acknowledged by alice")));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_that_is_down_is_retried_and_its_delivery_survives_a_restart() {
    let tp = TestPlane::start().await;
    // The receiver's port, bound but not listening (connections are refused) until the receiver starts: no other
    // test can take it meanwhile.
    let reserved = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    reserved.bind(&any.into()).expect("bind");
    let dead = reserved.local_addr().ok().and_then(|a| a.as_socket()).expect("addr").port();
    let metrics = "  metrics: {port: http, interval: 1s, timeout: 1s}\n";
    tp.apply(&app_yaml("cart", 1, &[], &format!("{READINESS}{metrics}")));
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1
kind: AlertRule
metadata: {{name: cart-up}}
spec:
  expr: max by (app) (testapp_info{{app=\"cart\"}})
  interval: 1s
---
apiVersion: capstan.dev/v1alpha1
kind: EscalationPolicy
metadata: {{name: everyone}}
spec:
  levels: [{{targets: [{{webhook: {{url: \"http://127.0.0.1:{dead}/gone\"}}}}], after: 1h}}]
"
    ));
    let failing = eventually("a delivery is failing and retried", T, || async {
        let i = incidents(&tp).await;
        let d = i.first()?["deliveries"].as_array()?.first()?.clone();
        (d["attempts"].as_u64()? >= 2).then_some(d)
    })
    .await;
    // The error says why, not only reqwest's `error sending request`.
    let why = failing["lastError"].as_str().unwrap_or("");
    assert!(why.contains("Connection refused") && why.contains(&format!("127.0.0.1:{dead}")), "{failing}");
    let rule = |tp: &TestPlane| {
        let c = tp.client.clone();
        async move { c.get("/api/v1/namespaces/default/alertrules/cart-up").await.ok() }
    };
    let before = rule(&tp).await.expect("rule")["status"]["alerts"][0].clone();
    let (active_at, labels) = (before["activeAt"].clone(), before["labels"].clone());
    assert!(active_at.is_string(), "{before}");

    // Capstan restarts: the incident and its undelivered notification are still there; once the receiver is
    // up, it arrives.
    let tp = tp.restart().await;
    // The firing alert keeps the time it became active (ALERTS_FOR_STATE), as Prometheus restores it. The replica
    // was stopped with Capstan (its series marked stale) and comes back, maybe on another port: the rule aggregates
    // by app, so it is the same alert, restored once its series return — not at the first evaluation, which sees
    // none yet.
    let restored = eventually("the rule evaluated again", T, || async {
        let all = rule(&tp).await?["status"]["alerts"].as_array()?.clone();
        all.into_iter().find(|a| a["labels"] == labels)
    })
    .await;
    assert_eq!((&restored["activeAt"], &restored["state"]), (&active_at, &json!("firing")), "{restored}");
    let i = incidents(&tp).await;
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!(i[0]["deliveries"].as_array().map(Vec::len), Some(1), "the delivery was kept: {i:?}");
    reserved.listen(128).expect("listen on the receiver's port");
    reserved.set_nonblocking(true).expect("nonblocking");
    let l = tokio::net::TcpListener::from_std(reserved.into()).expect("the receiver's listener");
    let (_, inbox) = receiver_on(l);
    let got = eventually("the kept notification arrives", Duration::from_secs(120), || async {
        received(&inbox, "gone", "firing").first().cloned()
    })
    .await;
    let url = got["alerts"][0]["generatorURL"].as_str().unwrap_or("");
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/api/v1/query?query=max+by+%28app%29+%28testapp_info"),
        "{got}"
    );
    assert!(got["externalURL"].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:")), "{got}");
    assert_eq!(got["alerts"][0]["startsAt"], active_at, "{got}");
    assert_eq!(incidents(&tp).await.len(), 1, "the restored alert belongs to the incident it had");
    eventually("nothing left to deliver", T, || async {
        let i = incidents(&tp).await;
        i.first()?["deliveries"].as_array()?.is_empty().then_some(())
    })
    .await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_with_bad_promql_is_refused_with_the_position() {
    let tp = TestPlane::start().await;
    let objects = vec![json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "AlertRule", "metadata": {"name": "broken"},
        "spec": {"expr": "sum(rate(http_requests_total[5m]) by (job"},
    })];
    let err = format!("{:?}", tp.plane().apply(objects).expect_err("refused"));
    assert!(err.contains("spec.expr") && err.contains("parse error at char"), "{err}");
    let objects = vec![json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "AlertRule", "metadata": {"name": "scalar"},
        "spec": {"expr": "1 + 1"},
    })];
    let err = format!("{:?}", tp.plane().apply(objects).expect_err("refused"));
    assert!(err.contains("no instant vector"), "{err}");
    // The example in the docs is admitted as written.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/monitoring/alerts.yaml"))
            .expect("examples/monitoring/alerts.yaml");
    tp.apply(&example);
    let rules = tp.client.get("/api/v1/alertrules").await.expect("list");
    assert_eq!(rules["items"].as_array().map(Vec::len), Some(3));
    tp.stop().await;
}

/// A minimal SMTP server on 127.0.0.1 that keeps each message's envelope and data.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let keep = mails.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                let mut mail = String::new();
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            keep.lock().expect("mails").push(std::mem::take(&mut mail));
                            let _ = w.write_all(b"250 queued\r\n").await;
                        } else {
                            mail.push_str(&line);
                            mail.push('\n');
                        }
                        continue;
                    }
                    let upper = line.to_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 sink\r\n"
                    } else if upper.starts_with("DATA") {
                        in_data = true;
                        b"354 go on\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        mail.push_str(&line);
                        mail.push('\n');
                        b"250 ok\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (port, mails)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_notifier_delivers_through_smtp() {
    let tp = TestPlane::start().await;
    let (smtp, mails) = smtp_sink().await;
    let metrics = "  metrics: {port: http, interval: 1s, timeout: 1s}\n";
    tp.apply(&app_yaml("mailer", 1, &[], &format!("{READINESS}{metrics}")));
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1
kind: AlertRule
metadata: {{name: mailer-up}}
spec:
  alert: MailerUp
  expr: testapp_info{{app=\"mailer\"}}
  annotations: {{summary: \"{{{{ $labels.replica }}}} is up\"}}
  interval: 1s
---
apiVersion: capstan.dev/v1alpha1
kind: EscalationPolicy
metadata: {{name: mail}}
spec:
  match: {{alertname: MailerUp}}
  levels: [{{targets: [{{email: {{to: [oncall@example.com], from: capstan@example.com, smarthost: \"127.0.0.1:{smtp}\"}}}}], after: 1h}}]
"
    ));
    let mail = eventually("a mail arrives", T, || async { mails.lock().expect("mails").first().cloned() }).await;
    assert!(mail.contains("oncall@example.com"), "{mail}");
    assert!(mail.contains("Subject: [FIRING]"), "{mail}");
    assert!(mail.contains("mailer-0 is up"), "{mail}");
    tp.stop().await;
}
