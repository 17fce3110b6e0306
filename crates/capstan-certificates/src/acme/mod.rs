//! ACME (RFC 8555) on the embedded runtime: the Issuer's account, registered once and kept in its Secret, and a
//! Certificate's order, its HTTP-01 challenges answered by the Gateways the solver names (published to the front
//! door through [`Answers`], checked from this machine before the server is told to look), finalized with a CSR of
//! the Certificate's key.

pub mod account;
pub mod ari;
pub mod http;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use capstan_model::acme::{solver_for, AcmeIssuer, ChallengeAnswer};
use capstan_model::certificate::Certificate;
use capstan_model::gateway::{FromNamespaces, Gateway, ListenerProtocol, ParentReference};
use capstan_model::ObjectKey;
use capstan_store::Store;
use chrono::{DateTime, Utc};
use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};
use tokio::sync::watch;

use crate::error::IssueError;
use crate::keys::Key;

/// The HTTP-01 challenges being answered, published to the front door.
#[derive(Clone)]
pub struct Answers(Arc<watch::Sender<Arc<Vec<ChallengeAnswer>>>>);

/// What the front door reads [`Answers`] from.
pub type AnswersFeed = watch::Receiver<Arc<Vec<ChallengeAnswer>>>;

impl Answers {
    pub fn new() -> (Answers, AnswersFeed) {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        (Answers(Arc::new(tx)), rx)
    }

    fn add(&self, a: ChallengeAnswer) {
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
    pub fn current(&self) -> Arc<Vec<ChallengeAnswer>> {
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

/// The problem type of a rate limit (RFC 8555 §6.7).
pub const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

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
    // A problem document is the server's answer (a refusal, a limit); anything else never reached it. A limit that
    // says when it ends is waited out to then, not to the longer wait after a rejected order.
    let limited = matches!(e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(RATE_LIMITED));
    let rejected = matches!(e, instant_acme::Error::Api(_)) && !(limited && retry_after.is_some());
    IssueError::Acme { message, retry_after, rejected }
}

/// A new order for the plan's identifiers; naming the certificate it `replaces` (its ARI identifier) when given. A
/// server that refuses the replacement (it was replaced already, or the server does not take the field) gets the
/// order without it; a rate limit is not asked twice.
async fn new_order(
    plan: &Plan,
    account: &Account,
    http: &http::AcmeHttp,
    acme: &AcmeIssuer,
    replaces: Option<&str>,
) -> Result<instant_acme::Order, IssueError> {
    let order = || {
        let o = NewOrder::new(&plan.identifiers);
        match &acme.profile {
            Some(p) => o.profile(p),
            None => o,
        }
    };
    if let Some((aki, serial)) = replaces.and_then(|r| r.split_once('.')) {
        let id = instant_acme::CertificateIdentifier { authority_key_identifier: aki.into(), serial: serial.into() };
        match account.new_order(&order().replaces(id)).await {
            Ok(o) => return Ok(o),
            // The field refused (RFC 9773 §5: the certificate was replaced already, or the server does not take
            // it), or taken and not said back: ordered again without it. Anything else (a limit, a timeout that may
            // have made the order) is not asked twice.
            Err(e) if replaces_refused(&e) => {
                tracing::info!(
                    "the ACME server did not take an order replacing {aki}.{serial} ({e}); ordering without"
                );
                http.retry_after.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            Err(e) => return Err(acme_error("creating the order", &e, http)),
        }
    }
    account.new_order(&order()).await.map_err(|e| acme_error("creating the order", &e, http))
}

/// Whether a new order's error says the server would not take its `replaces` field.
fn replaces_refused(e: &instant_acme::Error) -> bool {
    const REFUSALS: [&str; 3] = [
        "urn:ietf:params:acme:error:alreadyReplaced",
        "urn:ietf:params:acme:error:malformed",
        "urn:ietf:params:acme:error:conflict",
    ];
    match e {
        instant_acme::Error::Api(p) => {
            p.r#type.as_deref().is_some_and(|t| REFUSALS.contains(&t)) || matches!(p.status, Some(400 | 409))
        }
        // instant-acme's own check: the order made does not name what it replaces.
        instant_acme::Error::Other(o) => o.to_string().contains("replaces field mismatch"),
        _ => false,
    }
}

/// What an order needs, checked before the server is asked anything: the identifiers, and for each name (in its
/// canonical form: an address as the server writes it) the parentRefs that answer it and where the front door
/// serves them on this machine.
pub struct Plan {
    /// TLS-ALPN-01 on HTTPS listeners rather than HTTP-01 on HTTP ones (the Issuer's annotation).
    tls_alpn: bool,
    identifiers: Vec<Identifier>,
    parents: BTreeMap<String, (Vec<ParentReference>, Vec<SocketAddr>)>,
}

/// A name as an ACME server writes it back: an address in its canonical form, a DNS name in lower case.
fn canonical(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// Checks that every name of `cert` can be proven on this machine (a solver that selects it, HTTP-01 through a
/// Gateway, an HTTP listener of its parentRefs that takes it), naming the field when not.
pub fn plan(store: &Store, acme: &AcmeIssuer, tls_alpn: bool, cert: &Certificate) -> Result<Plan, IssueError> {
    let spec = &cert.spec;
    let ns = cert.metadata.namespace();
    if !spec.uris.is_empty() || !spec.email_addresses.is_empty() {
        return Err(IssueError::Issuer(
            "ACME servers certify DNS names and IP addresses only: remove spec.uris and spec.emailAddresses".into(),
        ));
    }
    let mut identifiers = Vec::new();
    let labels = cert.metadata.labels.clone();
    let mut parents = BTreeMap::new();
    for (field, name) in names(cert) {
        let solver = solver_for(&acme.solvers, &name, &labels).ok_or_else(|| {
            IssueError::Issuer(format!(
                "{field} `{name}`: no solver of {} {} selects it (spec.acme.solvers)",
                spec.issuer_ref.kind(),
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
        if parents.contains_key(&canonical(&name)) {
            continue;
        }
        if tls_alpn && name.parse::<IpAddr>().is_ok() {
            return Err(IssueError::Issuer(format!(
                "{field} `{name}`: TLS-ALPN-01 for an address is validated under its reverse-DNS name (RFC 8738), which is not answered here; prove it by HTTP-01 (an Issuer without the capstan.dev/acme-challenge annotation)"
            )));
        }
        let targets = listener_addresses(store, ns, &route.parent_refs, &name, tls_alpn)
            .map_err(|why| IssueError::Issuer(format!("{field} `{name}`: {why}")))?;
        identifiers.push(match name.parse::<IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(name.clone()),
        });
        parents.insert(canonical(&name), (route.parent_refs.clone(), targets));
    }
    Ok(Plan { tls_alpn, identifiers, parents })
}

/// Whether a challenge token is one an ACME server makes (base64url, RFC 8555 section 8.1): anything else is not
/// put into a route or a URL.
fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Orders `cert` from the ACME server of `acme` with `account`, for `key`, as `plan` says: the certificate chain,
/// PEM. Every answer is published and fetched back before the server is told to look at any, and stays published
/// until the server has validated them all (or the order failed).
#[allow(clippy::too_many_arguments)]
pub async fn order(
    plan: &Plan,
    account: &Account,
    http: &http::AcmeHttp,
    acme: &AcmeIssuer,
    cert: &Certificate,
    key: &Key,
    replaces: Option<&str>,
    answers: &Answers,
) -> Result<String, IssueError> {
    let ns = cert.metadata.namespace();
    let mut order = new_order(plan, account, http, acme, replaces).await?;
    let mut published = Published { answers, tokens: Vec::new() };
    let mut pending = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| acme_error("reading an authorization", &e, http))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(refused(format!("the authorization of {} is {other:?}", a.identifier()))),
            }
            let name = canonical(&a.identifier().to_string());
            let Some((parent_refs, targets)) = plan.parents.get(&name) else {
                return Err(refused(format!("the server asks to prove {name}, which the Certificate does not name")));
            };
            let (kind, label) = challenge_type(plan.tls_alpn);
            let challenge = a
                .challenge(kind)
                .ok_or_else(|| refused(format!("the server offers no {label} challenge for {name}")))?;
            if !token_ok(&challenge.token) {
                return Err(refused(format!("the server's {label} token for {name} is not base64url")));
            }
            let key_authorization = challenge.key_authorization();
            let tls_alpn = match plan.tls_alpn {
                true => Some(alpn_certificate(&name, key_authorization.digest().as_ref())?),
                false => None,
            };
            let answer = ChallengeAnswer {
                namespace: ns.to_string(),
                parent_refs: parent_refs.clone(),
                host: name.clone(),
                token: challenge.token.clone(),
                key_authorization: key_authorization.as_str().to_string(),
                tls_alpn,
            };
            published.tokens.push(answer.token.clone());
            answers.add(answer.clone());
            pending.push((answer, targets.clone()));
        }
    }
    for (answer, targets) in &pending {
        match &answer.tls_alpn {
            Some((cert, _)) => alpn_self_check(answer, cert, targets).await?,
            None => self_check(answer, targets).await?,
        }
    }
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| acme_error("reading an authorization", &e, http))?;
            if a.status != AuthorizationStatus::Pending {
                continue;
            }
            let name = a.identifier().to_string();
            if let Some(mut challenge) = a.challenge(challenge_type(plan.tls_alpn).0) {
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| acme_error(&format!("answering the challenge of {name}"), &e, http))?;
            }
        }
    }
    let retries = RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await.map_err(|e| acme_error("validating the challenges", &e, http))?;
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
        return Err(refused(format!(
            "the ACME server could not validate the challenges: {}",
            if why.is_empty() { format!("the order is {status:?}") } else { why.join("; ") }
        )));
    }
    drop(published);
    let csr = csr(cert, key)?;
    order.finalize_csr(&csr).await.map_err(|e| acme_error("finalizing the order", &e, http))?;
    order.poll_certificate(&retries).await.map_err(|e| acme_error("downloading the certificate", &e, http))
}

/// The challenge type answered, and its name for messages.
fn challenge_type(tls_alpn: bool) -> (ChallengeType, &'static str) {
    match tls_alpn {
        true => (ChallengeType::TlsAlpn01, "TLS-ALPN-01"),
        false => (ChallengeType::Http01, "HTTP-01"),
    }
}

/// TLS-ALPN-01's certificate for `name` (RFC 8737): self-signed, the name its only SAN, and the critical
/// acmeIdentifier extension holding the SHA-256 of the key authorization. PEM certificate and key.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<(String, String), IssueError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(IssueError::rcgen)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(IssueError::rcgen)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(IssueError::rcgen)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// TLS-ALPN-01's self check: a handshake for the name offering only `acme-tls/1`, until the challenge's
/// certificate is what comes back.
async fn alpn_self_check(answer: &ChallengeAnswer, cert_pem: &str, targets: &[SocketAddr]) -> Result<(), IssueError> {
    use rustls::pki_types::pem::PemObject;
    let want = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| IssueError::Sign("the TLS-ALPN-01 certificate does not parse".into()))?;
    until_served(answer, "TLS-ALPN-01", targets, |target| {
        let want = &want;
        async move {
            match http::alpn_probe(target, &answer.host).await? {
                leaf if leaf == want.as_ref() => Ok(()),
                _ => Err("another certificate answered".into()),
            }
        }
    })
    .await
}

/// The server refused or could not validate: counts against its failed-validation limits.
fn refused(message: String) -> IssueError {
    IssueError::Acme { message, retry_after: None, rejected: true }
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

/// Where the HTTP listeners of `parent_refs` that take `host`'s challenge can be reached from this machine (the
/// same listener rules the front door applies to the answer: protocol HTTP, a hostname that covers the name,
/// `allowedRoutes` that take an HTTPRoute of the Certificate's namespace), or why none can.
fn listener_addresses(
    store: &Store,
    namespace: &str,
    parent_refs: &[ParentReference],
    host: &str,
    tls_alpn: bool,
) -> Result<Vec<SocketAddr>, String> {
    let (wanted, what, label) = match tls_alpn {
        true => (ListenerProtocol::Https, "HTTPS", "TLS-ALPN-01 is answered in HTTPS handshakes"),
        false => (ListenerProtocol::Http, "HTTP", "HTTP-01 is answered over plain HTTP"),
    };
    let mut out = Vec::new();
    let mut why = Vec::new();
    for p in parent_refs {
        let gw_ns = p.namespace.as_deref().unwrap_or(namespace);
        let key = ObjectKey::new("Gateway", gw_ns, &p.name);
        let Some(v) = store.get(&key).map_err(|e| format!("reading {key}: {e}"))? else {
            why.push(format!("Gateway {gw_ns}/{} does not exist", p.name));
            continue;
        };
        let g = serde_json::from_value::<Gateway>(v).map_err(|e| format!("{key}: {e}"))?;
        let ip = g
            .spec
            .addresses
            .iter()
            .find_map(|a| a.value.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        for l in &g.spec.listeners {
            if !(p.section_name.as_ref().is_none_or(|n| *n == l.name) && p.port.is_none_or(|x| x == l.port)) {
                continue;
            }
            let at = format!("listener {} of Gateway {gw_ns}/{}", l.name, p.name);
            let covers = match l.hostname.as_deref() {
                None => true,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
                    None => h.eq_ignore_ascii_case(host),
                },
            };
            let allowed = l.allowed_routes.as_ref();
            let from = allowed.and_then(|a| a.namespaces.as_ref()).map(|n| n.from).unwrap_or_default();
            let kinds = allowed.map(|a| a.kinds.as_slice()).unwrap_or_default();
            if l.protocol != wanted {
                why.push(format!("{at} is {}, and {label}", l.protocol.as_str()));
            } else if !covers {
                why.push(format!("{at} serves {}", l.hostname.as_deref().unwrap_or("*")));
            } else if !(from == FromNamespaces::All || (from == FromNamespaces::Same && gw_ns == namespace)) {
                why.push(format!("{at} does not take routes of namespace {namespace} (allowedRoutes)"));
            } else if !kinds.is_empty() && !kinds.iter().any(|k| k.kind == "HTTPRoute") {
                why.push(format!("{at} does not take HTTPRoutes (allowedRoutes.kinds)"));
            } else {
                out.push(SocketAddr::new(ip, l.port));
            }
        }
    }
    if out.is_empty() {
        let names = parent_refs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
        let why = if why.is_empty() { "no listener matches them".to_string() } else { why.join("; ") };
        return Err(format!(
            "no {what} listener of the solver's parentRefs ({names}) serves this name, so the ACME server could not reach its challenge: {why}"
        ));
    }
    Ok(out)
}

/// Asks the front door for a published answer through each target, as the ACME server will, until `probe` says
/// it is served (cert-manager's self check): the server is told to look only once every answer is there.
async fn until_served<F, Fut>(
    answer: &ChallengeAnswer,
    label: &str,
    targets: &[SocketAddr],
    probe: F,
) -> Result<(), IssueError>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + PROPAGATION_TIMEOUT;
    for target in targets {
        loop {
            let last = match probe(*target).await {
                Ok(()) => break,
                Err(why) => format!("{target}: {why}"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(IssueError::Acme {
                    message: format!(
                        "the {label} answer for {} was not served within {}s ({last})",
                        answer.host,
                        PROPAGATION_TIMEOUT.as_secs()
                    ),
                    retry_after: None,
                    rejected: false,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// HTTP-01's self check: a GET of the answer's path for its host, through the listener.
async fn self_check(answer: &ChallengeAnswer, targets: &[SocketAddr]) -> Result<(), IssueError> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let host = match answer.host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => answer.host.clone(),
    };
    until_served(answer, "HTTP-01", targets, |target| {
        let req = ::http::Request::get(format!("http://{target}{}", answer.path()))
            .header(::http::header::HOST, host.as_str())
            .body(http_body_util::Empty::new());
        let client = client.clone();
        async move {
            let req = req.map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(rsp)) => {
                    let status = rsp.status();
                    let body = rsp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    match status.is_success() && body.as_ref() == answer.key_authorization.as_bytes() {
                        true => Ok(()),
                        false => Err(format!("answered {status}")),
                    }
                }
                Ok(Err(e)) => Err(capstan_engine::errors::with_causes(&e)),
                Err(_) => Err("no answer within 5s".into()),
            }
        }
    })
    .await
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
    // A commonName not among the dnsNames is ordered as a name of its own: the CSR names it too, as ACME servers
    // require every name of the order in the request.
    if let Some(cn) = s.common_name.as_deref().filter(|c| !c.is_empty() && !s.dns_names.iter().any(|d| d == *c)) {
        let san = match cn.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                cn.try_into().map_err(|_| IssueError::Sign(format!("commonName `{cn}` cannot be requested")))?,
            ),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    let request = params.serialize_request(&key.key_pair()?).map_err(IssueError::rcgen)?;
    Ok(request.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(token: &str) -> ChallengeAnswer {
        ChallengeAnswer {
            namespace: "default".into(),
            parent_refs: Vec::new(),
            host: "shop.example.com".into(),
            token: token.into(),
            key_authorization: format!("{token}.thumb"),
            tls_alpn: None,
        }
    }

    #[test]
    fn answers_are_withdrawn_when_their_order_ends_however_it_ends() {
        let (answers, feed) = Answers::new();
        answers.add(answer("other-order"));
        {
            let mut published = Published { answers: &answers, tokens: Vec::new() };
            for t in ["a", "b"] {
                published.tokens.push(t.into());
                answers.add(answer(t));
            }
            assert_eq!(feed.borrow().len(), 3);
            // An order that fails returns early: the guard goes out of scope all the same.
        }
        let left: Vec<String> = feed.borrow().iter().map(|a| a.token.clone()).collect();
        assert_eq!(left, ["other-order"], "only this order's answers go");
        // The same token published again replaces the first.
        answers.add(answer("other-order"));
        assert_eq!(answers.current().len(), 1);
    }

    #[test]
    fn a_rate_limit_that_says_when_it_ends_is_waited_out_to_then() {
        let http = http::AcmeHttp::new(&http::Trust::Nothing).expect("a client");
        let problem = |type_: &str| {
            let p = serde_json::json!({"type": type_, "detail": "too many", "status": 429});
            instant_acme::Error::Api(serde_json::from_value(p).expect("a problem"))
        };
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(15);
        *http.retry_after.lock().expect("slot") = Some(later);
        let IssueError::Acme { message, retry_after, rejected } =
            acme_error("creating the order", &problem(RATE_LIMITED), &http)
        else {
            panic!("an ACME error")
        };
        assert_eq!(retry_after, Some(DateTime::<Utc>::from(later)));
        assert!(!rejected, "held to its Retry-After, not the longer wait after a rejected order");
        assert!(message.contains("rateLimited") && message.contains("retry after"), "{message}");
        // Taken once: the next error does not inherit it.
        assert!(http.retry_after.lock().expect("slot").is_none());
        // Without a Retry-After, or a refusal of another type, it counts as a rejected order.
        let IssueError::Acme { rejected, .. } = acme_error("x", &problem(RATE_LIMITED), &http) else { panic!() };
        assert!(rejected);
        *http.retry_after.lock().expect("slot") = Some(later);
        let unauthorized = problem("urn:ietf:params:acme:error:unauthorized");
        let IssueError::Acme { rejected, retry_after, .. } = acme_error("x", &unauthorized, &http) else { panic!() };
        assert!(rejected && retry_after.is_some());
    }

    #[test]
    fn an_order_is_made_again_without_replaces_only_when_the_field_was_refused() {
        let problem = |type_: &str, status: u16| {
            let p = serde_json::json!({"type": type_, "detail": "x", "status": status});
            instant_acme::Error::Api(serde_json::from_value(p).expect("a problem"))
        };
        assert!(replaces_refused(&problem("urn:ietf:params:acme:error:alreadyReplaced", 409)));
        assert!(replaces_refused(&problem("urn:ietf:params:acme:error:malformed", 400)));
        assert!(replaces_refused(&instant_acme::Error::Other("replaces field mismatch: expected x".into())));
        assert!(!replaces_refused(&problem(RATE_LIMITED, 429)), "a limit is not asked twice");
        assert!(!replaces_refused(&problem("urn:ietf:params:acme:error:serverInternal", 500)));
        assert!(!replaces_refused(&instant_acme::Error::Other("timed out".into())), "the order may exist");
    }

    #[test]
    fn only_base64url_tokens_reach_a_route() {
        assert!(token_ok("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "../admin", "a/b", "a?b", "a b", "%2e%2e", &"x".repeat(300)] {
            assert!(!token_ok(bad), "{bad}");
        }
    }

    #[test]
    fn names_are_compared_as_the_server_writes_them() {
        assert_eq!(canonical("2001:DB8:0::1"), "2001:db8::1");
        assert_eq!(canonical("Shop.Example.com"), "shop.example.com");
        assert_eq!(canonical("127.0.0.1"), "127.0.0.1");
    }
}
