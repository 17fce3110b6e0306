//! ACME (RFC 8555) on the embedded runtime: the Issuer's account, registered once and kept in its Secret, and a
//! Certificate's order, its HTTP-01 challenges answered by the Gateways the solver names (published to the front
//! door through [`Answers`], checked from this machine before the server is told to look), finalized with a CSR of
//! the Certificate's key.

pub mod account;
pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use capstan_model::acme::{solver_for, AcmeIssuer, Http01Answer};
use capstan_model::certificate::Certificate;
use capstan_model::gateway::{Gateway, ListenerProtocol};
use capstan_model::ObjectKey;
use capstan_store::Store;
use chrono::{DateTime, Utc};
use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};
use tokio::sync::watch;

use crate::error::IssueError;
use crate::keys::Key;

/// The HTTP-01 challenges being answered, published to the front door.
#[derive(Clone)]
pub struct Answers(Arc<watch::Sender<Arc<Vec<Http01Answer>>>>);

/// What the front door reads [`Answers`] from.
pub type AnswersFeed = watch::Receiver<Arc<Vec<Http01Answer>>>;

impl Answers {
    pub fn new() -> (Answers, AnswersFeed) {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        (Answers(Arc::new(tx)), rx)
    }

    fn add(&self, a: Http01Answer) {
        self.0.send_modify(|all| {
            let mut v = all.as_ref().clone();
            v.retain(|o| o.token != a.token);
            v.push(a);
            *all = Arc::new(v);
        });
    }

    fn remove(&self, tokens: &[String]) {
        self.0.send_modify(|all| {
            let mut v = all.as_ref().clone();
            v.retain(|o| !tokens.contains(&o.token));
            *all = Arc::new(v);
        });
    }

    /// The challenges answered now.
    pub fn current(&self) -> Arc<Vec<Http01Answer>> {
        self.0.borrow().clone()
    }
}

/// Takes the answers it published back when an order is done, whichever way it ends.
struct Published<'a> {
    answers: &'a Answers,
    tokens: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.answers.remove(&self.tokens);
    }
}

/// How long the server gets to validate the challenges and to issue, polled with backoff.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the front door gets to serve a published answer.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(20);

fn acme_error(what: &str, e: &instant_acme::Error, http: &http::AcmeHttp) -> IssueError {
    let retry_after =
        http.retry_after.lock().unwrap_or_else(|p| p.into_inner()).take().map(|t: SystemTime| DateTime::<Utc>::from(t));
    let message = match e {
        instant_acme::Error::Api(p) => {
            let mut m = format!("{what}: the ACME server refused");
            if let Some(d) = &p.detail {
                m.push_str(&format!(": {d}"));
            }
            if let Some(t) = &p.r#type {
                m.push_str(&format!(" ({t})"));
            }
            for s in &p.subproblems {
                m.push_str(&format!("; {s}"));
            }
            m
        }
        other => format!("{what}: {}", capstan_engine::errors::with_causes(other)),
    };
    let message = match retry_after {
        Some(at) => format!("{message}; the server asks to retry after {}", at.format("%Y-%m-%dT%H:%M:%SZ")),
        None => message,
    };
    IssueError::Acme { message, retry_after }
}

/// Orders `cert` from the ACME server of `acme` with `account`, for `key`: the certificate chain, PEM.
#[allow(clippy::too_many_arguments)]
pub async fn order(
    store: &Store,
    account: &Account,
    http: &http::AcmeHttp,
    acme: &AcmeIssuer,
    cert: &Certificate,
    key: &Key,
    answers: &Answers,
) -> Result<String, IssueError> {
    let spec = &cert.spec;
    let ns = cert.metadata.namespace();
    let mut identifiers: Vec<Identifier> = spec.dns_names.iter().map(|d| Identifier::Dns(d.clone())).collect();
    if let Some(cn) = spec.common_name.as_deref().filter(|c| !c.is_empty()) {
        if !spec.dns_names.iter().any(|d| d == cn) && cn.parse::<std::net::IpAddr>().is_err() {
            identifiers.push(Identifier::Dns(cn.to_string()));
        }
    }
    for ip in &spec.ip_addresses {
        let ip = ip.parse().map_err(|_| IssueError::Sign(format!("`{ip}` is not an IP address")))?;
        identifiers.push(Identifier::Ip(ip));
    }
    if !spec.uris.is_empty() || !spec.email_addresses.is_empty() {
        return Err(IssueError::Issuer(
            "ACME servers certify DNS names and IP addresses only: remove spec.uris and spec.emailAddresses".into(),
        ));
    }
    // Every name's way of being proven is known before anything is asked of the server.
    let labels = cert.metadata.labels.clone();
    let mut parents = BTreeMap::new();
    for (field, name) in names(cert) {
        let solver = solver_for(&acme.solvers, &name, &labels).ok_or_else(|| {
            IssueError::Issuer(format!(
                "{field} `{name}`: no solver of Issuer {} selects it (spec.acme.solvers)",
                spec.issuer_ref.name
            ))
        })?;
        let Some(route) = solver.http01.as_ref().and_then(|h| h.gateway_http_route.as_ref()) else {
            return Err(IssueError::Issuer(format!(
                "{field} `{name}`: its solver is not solved on Capstan's embedded runtime (HTTP-01 through gatewayHTTPRoute is; dns01 and ingress solvers are for a cluster's cert-manager)"
            )));
        };
        if name.starts_with("*.") {
            return Err(IssueError::Issuer(format!(
                "{field} `{name}`: a wildcard name can only be proven by DNS-01, which the embedded runtime does not solve"
            )));
        }
        let targets = listener_addresses(store, ns, &route.parent_refs, &name)?;
        if targets.is_empty() {
            return Err(IssueError::Issuer(format!(
                "{field} `{name}`: no HTTP listener of the solver's parentRefs ({}) serves this name; the ACME server could not reach the challenge",
                route.parent_refs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        parents.insert(name, (route.parent_refs.clone(), targets));
    }

    let mut new_order = NewOrder::new(&identifiers);
    if let Some(p) = &acme.profile {
        new_order = new_order.profile(p);
    }
    let mut order = account.new_order(&new_order).await.map_err(|e| acme_error("creating the order", &e, http))?;
    let mut published = Published { answers, tokens: Vec::new() };
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| acme_error("reading an authorization", &e, http))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(IssueError::Acme {
                        message: format!("the authorization of {} is {other:?}", a.identifier()),
                        retry_after: None,
                    })
                }
            }
            let name = a.identifier().to_string();
            let Some((parent_refs, targets)) = parents.get(&name) else {
                return Err(IssueError::Acme {
                    message: format!("the server asks to prove {name}, which the Certificate does not name"),
                    retry_after: None,
                });
            };
            let mut challenge = a.challenge(ChallengeType::Http01).ok_or_else(|| IssueError::Acme {
                message: format!("the server offers no HTTP-01 challenge for {name}"),
                retry_after: None,
            })?;
            let answer = Http01Answer {
                namespace: ns.to_string(),
                parent_refs: parent_refs.clone(),
                host: name.clone(),
                token: challenge.token.clone(),
                key_authorization: challenge.key_authorization().as_str().to_string(),
            };
            published.tokens.push(answer.token.clone());
            answers.add(answer.clone());
            self_check(&answer, targets).await?;
            challenge
                .set_ready()
                .await
                .map_err(|e| acme_error(&format!("answering the challenge of {name}"), &e, http))?;
        }
    }
    let retries = RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await.map_err(|e| acme_error("waiting for the validation", &e, http))?;
    if status != OrderStatus::Ready {
        // Which name failed, and why the server says it did.
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut a)) = authorizations.next().await {
            let name = a.identifier().to_string();
            if let Ok(state) = a.refresh().await {
                for c in &state.challenges {
                    if let Some(p) = &c.error {
                        why.push(format!("{name}: {}", p.detail.clone().unwrap_or_else(|| format!("{p}"))));
                    }
                }
            }
        }
        return Err(IssueError::Acme {
            message: format!(
                "the ACME server could not validate the challenges: {}",
                if why.is_empty() { format!("the order is {status:?}") } else { why.join("; ") }
            ),
            retry_after: None,
        });
    }
    drop(published);
    let csr = csr(cert, key)?;
    order.finalize_csr(&csr).await.map_err(|e| acme_error("finalizing the order", &e, http))?;
    order.poll_certificate(&retries).await.map_err(|e| acme_error("downloading the certificate", &e, http))
}

/// Each name to prove, with the field it comes from.
fn names(cert: &Certificate) -> Vec<(String, String)> {
    let s = &cert.spec;
    let mut out: Vec<(String, String)> =
        s.dns_names.iter().enumerate().map(|(i, d)| (format!("spec.dnsNames[{i}]"), d.clone())).collect();
    if let Some(cn) = s.common_name.as_deref().filter(|c| !c.is_empty() && !s.dns_names.iter().any(|d| d == *c)) {
        out.push(("spec.commonName".into(), cn.to_string()));
    }
    out.extend(s.ip_addresses.iter().enumerate().map(|(i, ip)| (format!("spec.ipAddresses[{i}]"), ip.clone())));
    out
}

/// Where the HTTP listeners of `parent_refs` that serve `host` can be reached from this machine.
fn listener_addresses(
    store: &Store,
    namespace: &str,
    parent_refs: &[capstan_model::gateway::ParentReference],
    host: &str,
) -> Result<Vec<std::net::SocketAddr>, IssueError> {
    let mut out = Vec::new();
    for p in parent_refs {
        let gw_ns = p.namespace.as_deref().unwrap_or(namespace);
        let key = ObjectKey::new("Gateway", gw_ns, &p.name);
        let Some(v) = store.get(&key).map_err(|e| IssueError::Issuer(format!("reading {key}: {e}")))? else {
            continue;
        };
        let Ok(g) = serde_json::from_value::<Gateway>(v) else { continue };
        let ip = g
            .spec
            .addresses
            .iter()
            .find_map(|a| a.value.parse::<std::net::IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        for l in &g.spec.listeners {
            let named = p.section_name.as_ref().is_none_or(|n| *n == l.name) && p.port.is_none_or(|x| x == l.port);
            let covers = match l.hostname.as_deref() {
                None => true,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
                    None => h.eq_ignore_ascii_case(host),
                },
            };
            if named && covers && l.protocol == ListenerProtocol::Http {
                out.push(std::net::SocketAddr::new(ip, l.port));
            }
        }
    }
    Ok(out)
}

/// Asks the front door for a published answer, as the ACME server will, until it is served (cert-manager's
/// self check): the server is told to look only once the answer is there.
async fn self_check(answer: &Http01Answer, targets: &[std::net::SocketAddr]) -> Result<(), IssueError> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let deadline = tokio::time::Instant::now() + PROPAGATION_TIMEOUT;
    for target in targets {
        loop {
            let req = ::http::Request::get(format!("http://{target}{}", answer.path()))
                .header(::http::header::HOST, answer.host.as_str())
                .body(http_body_util::Empty::new())
                .map_err(|e| IssueError::Sign(e.to_string()))?;
            let last = match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(rsp)) => {
                    let status = rsp.status();
                    let body = rsp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    if status.is_success() && body.as_ref() == answer.key_authorization.as_bytes() {
                        break;
                    }
                    format!("{target} answered {status}")
                }
                Ok(Err(e)) => format!("{target}: {}", capstan_engine::errors::with_causes(&e)),
                Err(_) => format!("{target} did not answer within 5s"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(IssueError::Acme {
                    message: format!(
                        "the HTTP-01 answer for {} was not served within {}s ({last})",
                        answer.host,
                        PROPAGATION_TIMEOUT.as_secs()
                    ),
                    retry_after: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The certificate signing request for `cert`'s names, signed with `key`.
fn csr(cert: &Certificate, key: &Key) -> Result<Vec<u8>, IssueError> {
    let s = &cert.spec;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    if let Some(cn) = s.common_name.as_deref().filter(|c| !c.is_empty()) {
        dn.push(rcgen::DnType::CommonName, cn);
    }
    params.distinguished_name = dn;
    for d in &s.dns_names {
        let name = d.as_str().try_into().map_err(|_| IssueError::Sign(format!("dnsName `{d}` cannot be requested")))?;
        params.subject_alt_names.push(rcgen::SanType::DnsName(name));
    }
    for ip in &s.ip_addresses {
        let ip = ip.parse().map_err(|_| IssueError::Sign(format!("`{ip}` is not an IP address")))?;
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    let request = params.serialize_request(&key.key_pair()?).map_err(IssueError::rcgen)?;
    Ok(request.der().to_vec())
}
