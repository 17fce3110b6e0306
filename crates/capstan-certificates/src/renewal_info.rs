//! The ACME servers' renewal suggestions (ARI, RFC 9773) for the Certificates their issuers signed: each asked only
//! when due, the time in a window chosen once (a poll that brings the same window keeps it), and whether a server
//! offers ARI at all (an order then names the certificate it replaces).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use capstan_model::acme::AcmeIssuer;
use capstan_model::ObjectKey;
use chrono::{DateTime, Utc};

use crate::acme::ari::{self, RenewalInfo};
use crate::acme::{account, http::AcmeHttp};
use crate::plan::Suggested;

/// How long a directory's answer about ARI is kept.
const DIRECTORY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long after a failed poll the server is asked again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// What the last poll for one Certificate said.
struct Entry {
    /// The certificate it is about (its ARI identifier).
    id: String,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    suggested: Option<Suggested>,
    next_poll: DateTime<Utc>,
    /// Whether the server offers ARI.
    offered: bool,
}

/// The outcome of [`RenewalInfos::suggestion`].
pub(crate) struct Lookup {
    pub suggested: Option<Suggested>,
    /// When to look again (the next poll).
    pub next_poll: DateTime<Utc>,
    /// Words for an event when the server's window is new or changed.
    pub news: Option<String>,
}

/// A directory's `renewalInfo` endpoint (None: ARI not offered), and when the directory was read.
type Endpoint = (Option<String>, DateTime<Utc>);

#[derive(Default)]
pub(crate) struct RenewalInfos {
    certificates: Mutex<HashMap<ObjectKey, Entry>>,
    /// Per directory URL: its `renewalInfo` endpoint (None: not offered), and when that was read.
    endpoints: Mutex<HashMap<String, Endpoint>>,
}

fn at(now: DateTime<Utc>, after: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(after).unwrap_or_default()
}

impl RenewalInfos {
    /// The suggestion of `acme`'s server for Certificate `key`, whose Secret holds `chain`: from the last poll while
    /// it holds for this certificate, else asked now (blocking on the runtime, bounded by the client's timeouts).
    pub fn suggestion(&self, key: &ObjectKey, acme: &AcmeIssuer, chain: &[u8], now: DateTime<Utc>) -> Option<Lookup> {
        let id = ari::certificate_id(chain).ok()?;
        {
            let known = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = known.get(key).filter(|e| e.id == id && e.next_poll > now) {
                return Some(Lookup { suggested: e.suggested.clone(), next_poll: e.next_poll, news: None });
            }
        }
        let polled = tokio::runtime::Handle::current().block_on(self.poll(acme, &id, now));
        let mut known = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        let previous = known.remove(key).filter(|e| e.id == id);
        let entry = match polled {
            Ok(None) => Entry { id, window: None, suggested: None, next_poll: at(now, DIRECTORY_TTL), offered: false },
            Ok(Some(info)) => {
                let window = (info.start, info.end);
                // The same window keeps the time chosen in it; a new one is drawn in.
                let suggested = match previous.as_ref().filter(|p| p.window == Some(window)) {
                    Some(p) => p.suggested.clone(),
                    None => Some(suggest(&info, ari::choose(&info, ari::random_fraction(), now))),
                };
                Entry { id, window: Some(window), suggested, next_poll: at(now, info.next_poll), offered: true }
            }
            Err(e) => {
                tracing::warn!(certificate = %key, "asking the ACME server for renewal information: {e}");
                let (window, suggested, offered) = match previous.as_ref() {
                    Some(p) => (p.window, p.suggested.clone(), p.offered),
                    None => (None, None, false),
                };
                Entry { id, window, suggested, next_poll: at(now, RETRY_AFTER_FAILURE), offered }
            }
        };
        let news = match (&entry.window, &entry.suggested) {
            (Some(w), Some(s)) if previous.as_ref().and_then(|p| p.window) != Some(*w) => Some(format!(
                "The ACME server suggests renewing between {} and {}: renewal at {}",
                w.0.to_rfc3339(),
                w.1.to_rfc3339(),
                s.at.to_rfc3339()
            )),
            _ => None,
        };
        let lookup = Lookup { suggested: entry.suggested.clone(), next_poll: entry.next_poll, news };
        known.insert(key.clone(), entry);
        Some(lookup)
    }

    /// The ARI identifier of the certificate in `chain`, for a new order of `key` to name as the one it replaces:
    /// when its server said it offers ARI.
    pub fn replaces(&self, key: &ObjectKey, chain: &[u8]) -> Option<String> {
        let id = ari::certificate_id(chain).ok()?;
        let known = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        known.get(key).filter(|e| e.offered && e.id == id).map(|_| id)
    }

    /// Forgets a Certificate that is gone.
    pub fn forget(&self, key: &ObjectKey) {
        self.certificates.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Asks `acme`'s server for the window of certificate `id`: `None` when it offers no ARI.
    async fn poll(&self, acme: &AcmeIssuer, id: &str, now: DateTime<Utc>) -> Result<Option<RenewalInfo>, String> {
        let http = account::trust(acme).map_err(|e| e.to_string()).and_then(|t| AcmeHttp::new(&t))?;
        let cached = {
            let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            endpoints.get(&acme.server).filter(|(_, read)| at(*read, DIRECTORY_TTL) > now).map(|(e, _)| e.clone())
        };
        let endpoint = match cached {
            Some(e) => e,
            None => {
                let e = ari::endpoint(&http, &acme.server).await?;
                self.endpoints.lock().unwrap_or_else(|p| p.into_inner()).insert(acme.server.clone(), (e.clone(), now));
                e
            }
        };
        match endpoint {
            Some(endpoint) => ari::fetch(&http, &endpoint, id).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The suggestion for a time chosen in the window of `info`.
fn suggest(info: &RenewalInfo, at: DateTime<Utc>) -> Suggested {
    let why = match &info.explanation {
        Some(url) => format!(" (explanation: {url})"),
        None => String::new(),
    };
    Suggested {
        at,
        message: format!(
            "Renewing certificate as the ACME server's renewal information suggests renewing between {} and {}{why}",
            info.start.to_rfc3339(),
            info.end.to_rfc3339()
        ),
    }
}
