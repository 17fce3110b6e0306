//! The ACME servers' renewal suggestions (ARI, RFC 9773) for the Certificates their issuers signed: each asked only
//! when due, the time in a window chosen once (kept while a later window still holds it), whether a server offers
//! ARI at all (an order then names the certificate it replaces), and a guard against a server that keeps asking for
//! renewals at once.

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
/// How long after a failed poll (or directory read) the server is asked again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);
/// The longest one poll may take, the directory included: a Certificate's reconcile waits for it.
const POLL_TIMEOUT: Duration = Duration::from_secs(15);
/// After a renewal the server asked for at once, the earliest the next one it asks for at once is made: a server
/// that keeps answering "now" (a clock gone wrong) does not get an order a minute.
const AT_ONCE_GUARD: Duration = Duration::from_secs(3600);

/// What the last poll for one Certificate said.
#[derive(Debug, Clone, PartialEq)]
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
    /// Words for an event when the renewal time the server's window gave is new.
    pub news: Option<String>,
}

/// A directory's `renewalInfo` endpoint (`Ok(None)`: ARI not offered; `Err`: the directory could not be read), and
/// when that was found.
type Endpoint = (Result<Option<String>, String>, DateTime<Utc>);

#[derive(Default)]
pub(crate) struct RenewalInfos {
    certificates: Mutex<HashMap<ObjectKey, Entry>>,
    /// Per directory URL.
    endpoints: Mutex<HashMap<String, Endpoint>>,
    /// Per Certificate, the last certificate whose renewal the server asked for at once, and when.
    at_once: Mutex<HashMap<ObjectKey, (String, DateTime<Utc>)>>,
}

fn at(now: DateTime<Utc>, after: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(after).unwrap_or_default()
}

impl RenewalInfos {
    /// The suggestion of `acme`'s server for Certificate `key`, whose Secret holds `chain`: from the last poll while
    /// it holds for this certificate, else asked now (blocking on the runtime, at most [`POLL_TIMEOUT`]).
    pub fn suggestion(&self, key: &ObjectKey, acme: &AcmeIssuer, chain: &[u8], now: DateTime<Utc>) -> Option<Lookup> {
        let id = ari::certificate_id(chain).ok()?;
        let cached = {
            let known = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
            known.get(key).filter(|e| e.id == id && e.next_poll > now).cloned()
        };
        let (entry, news) = match cached {
            Some(e) => (e, None),
            None => {
                let polled = tokio::runtime::Handle::current().block_on(async {
                    match tokio::time::timeout(POLL_TIMEOUT, self.poll(acme, &id, now)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {}s", POLL_TIMEOUT.as_secs())),
                    }
                });
                if let Err(e) = &polled {
                    tracing::warn!(certificate = %key, "asking the ACME server for renewal information: {e}");
                }
                let mut known = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
                let (entry, news) = next(known.get(key), id.clone(), polled, now, ari::random_fraction());
                known.insert(key.clone(), entry.clone());
                (entry, news)
            }
        };
        let mut at_once = self.at_once.lock().unwrap_or_else(|p| p.into_inner());
        let (suggested, last) = guard(entry.suggested.clone(), at_once.get(key), &id, now);
        if let Some(last) = last {
            at_once.insert(key.clone(), last);
        }
        Some(Lookup { suggested, next_poll: entry.next_poll, news })
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
        self.at_once.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Asks `acme`'s server for the window of certificate `id`: `None` when it offers no ARI. A directory that could
    /// not be read is not read again for [`RETRY_AFTER_FAILURE`], whichever Certificate asks.
    async fn poll(&self, acme: &AcmeIssuer, id: &str, now: DateTime<Utc>) -> Result<Option<RenewalInfo>, String> {
        let http = account::trust(acme).map_err(|e| e.to_string()).and_then(|t| AcmeHttp::new(&t))?;
        let cached = {
            let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            endpoints
                .get(&acme.server)
                .filter(|(found, read)| {
                    let ttl = if found.is_ok() { DIRECTORY_TTL } else { RETRY_AFTER_FAILURE };
                    at(*read, ttl) > now
                })
                .map(|(found, _)| found.clone())
        };
        let endpoint = match cached {
            Some(e) => e,
            None => {
                let e = ari::endpoint(&http, &acme.server).await;
                self.endpoints.lock().unwrap_or_else(|p| p.into_inner()).insert(acme.server.clone(), (e.clone(), now));
                e
            }
        };
        match endpoint? {
            Some(endpoint) => ari::fetch(&http, &endpoint, id).await.map(Some),
            None => Ok(None),
        }
    }
}

/// A Certificate's entry after a poll of certificate `id` (`previous`: the entry before, if any): a window drawn in
/// with `fraction` when it is new, or when the time drawn before is no longer in it; the words for an event when the
/// time is new. A failed poll keeps what the last one said of the same certificate.
fn next(
    previous: Option<&Entry>,
    id: String,
    polled: Result<Option<RenewalInfo>, String>,
    now: DateTime<Utc>,
    fraction: f64,
) -> (Entry, Option<String>) {
    let previous = previous.filter(|p| p.id == id);
    match polled {
        Ok(None) => {
            (Entry { id, window: None, suggested: None, next_poll: at(now, DIRECTORY_TTL), offered: false }, None)
        }
        Ok(Some(info)) => {
            let window = (info.start, info.end);
            // A server may answer a window that moves a little at each poll: a time still inside it is kept.
            let kept = previous
                .and_then(|p| p.suggested.clone())
                .filter(|s| s.at >= info.start && s.at <= info.end || s.at <= now && info.end <= now);
            let news = kept.is_none();
            let suggested = kept.unwrap_or_else(|| suggest(&info, ari::choose(&info, fraction, now)));
            let words = news.then(|| {
                format!(
                    "The ACME server suggests renewing between {} and {}: renewal at {}",
                    info.start.to_rfc3339(),
                    info.end.to_rfc3339(),
                    suggested.at.to_rfc3339()
                )
            });
            let entry = Entry {
                id,
                window: Some(window),
                suggested: Some(suggested),
                next_poll: at(now, info.next_poll),
                offered: true,
            };
            (entry, words)
        }
        Err(_) => {
            let (window, suggested, offered) = match previous {
                Some(p) => (p.window, p.suggested.clone(), p.offered),
                None => (None, None, false),
            };
            (Entry { id, window, suggested, next_poll: at(now, RETRY_AFTER_FAILURE), offered }, None)
        }
    }
}

/// `suggested` for certificate `id`, held back when it asks for a renewal at once within [`AT_ONCE_GUARD`] of the
/// last one asked at once for another certificate of the same Certificate (`last`); and what to record as the last.
fn guard(
    suggested: Option<Suggested>,
    last: Option<&(String, DateTime<Utc>)>,
    id: &str,
    now: DateTime<Utc>,
) -> (Option<Suggested>, Option<(String, DateTime<Utc>)>) {
    let Some(mut s) = suggested else { return (None, None) };
    if s.at > now {
        return (Some(s), None);
    }
    match last {
        // The same certificate, still waiting for its renewal: as it was.
        Some((seen, _)) if seen == id => (Some(s), None),
        Some((_, when)) if at(*when, AT_ONCE_GUARD) > now => {
            s.at = at(*when, AT_ONCE_GUARD);
            (Some(s), None)
        }
        _ => (Some(s), Some((id.to_string(), now))),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).expect("a time")
    }

    fn info(start: i64, end: i64) -> RenewalInfo {
        RenewalInfo { start: t(start), end: t(end), explanation: None, next_poll: Duration::from_secs(3600) }
    }

    #[test]
    fn a_time_is_drawn_once_per_window_and_kept_while_the_window_holds_it() {
        let (first, news) = next(None, "a.1".into(), Ok(Some(info(100, 200))), t(0), 0.5);
        let at = first.suggested.as_ref().map(|s| s.at);
        assert_eq!(at, Some(t(150)));
        assert!(news.is_some_and(|n| n.contains("renewal at")), "a new time is said");
        assert_eq!(first.next_poll, t(60));
        assert!(first.offered);
        // The same window, or one that moved but still holds the time: kept, nothing said.
        let (same, news) = next(Some(&first), "a.1".into(), Ok(Some(info(100, 200))), t(60), 0.9);
        assert_eq!((same.suggested.as_ref().map(|s| s.at), news), (at, None));
        let (moved, news) = next(Some(&first), "a.1".into(), Ok(Some(info(110, 210))), t(60), 0.9);
        assert_eq!((moved.suggested.as_ref().map(|s| s.at), news), (at, None));
        // A window that no longer holds it: drawn again, and said.
        let (earlier, news) = next(Some(&first), "a.1".into(), Ok(Some(info(10, 20))), t(5), 0.0);
        assert_eq!(earlier.suggested.map(|s| s.at), Some(t(10)));
        assert!(news.is_some());
        // Another certificate (renewed since): its own window, whatever the last one's.
        let (other, news) = next(Some(&first), "b.2".into(), Ok(Some(info(100, 200))), t(1), 0.0);
        assert_eq!((other.suggested.map(|s| s.at), news.is_some()), (Some(t(100)), true));
    }

    #[test]
    fn a_failed_poll_keeps_what_the_last_said_and_a_server_without_ari_is_asked_daily() {
        let (first, _) = next(None, "a.1".into(), Ok(Some(info(100, 200))), t(0), 0.5);
        let (failed, news) = next(Some(&first), "a.1".into(), Err("down".into()), t(60), 0.1);
        assert_eq!(
            (failed.window, failed.suggested.clone(), failed.offered),
            (first.window, first.suggested.clone(), true)
        );
        assert_eq!((failed.next_poll, news), (t(120), None), "asked again in an hour");
        let (none, _) = next(None, "a.1".into(), Err("down".into()), t(0), 0.1);
        assert!(none.suggested.is_none() && !none.offered);
        let (without, news) = next(Some(&first), "a.1".into(), Ok(None), t(0), 0.1);
        assert!(without.suggested.is_none() && !without.offered && news.is_none());
        assert_eq!(without.next_poll, t(24 * 60));
    }

    #[test]
    fn a_server_that_keeps_asking_for_renewals_at_once_gets_one_an_hour() {
        let now_please = |at: i64| Some(Suggested { at: t(at), message: "now".into() });
        // The first "at once" for a certificate: as asked, and recorded.
        let (s, last) = guard(now_please(-1), None, "a.1", t(0));
        assert_eq!(s.map(|s| s.at), Some(t(-1)));
        let last = last.expect("recorded");
        // The same certificate asked again (its renewal still to be made): as asked, nothing new recorded.
        assert_eq!(guard(now_please(-1), Some(&last), "a.1", t(1)), (now_please(-1), None));
        // The renewed certificate is asked for at once too: held to an hour after the first.
        let (held, none) = guard(now_please(2), Some(&last), "b.2", t(2));
        assert_eq!((held.map(|s| s.at), none), (Some(t(60)), None));
        // An hour on, it is made.
        let (made, again) = guard(now_please(61), Some(&last), "b.2", t(61));
        assert_eq!(made.map(|s| s.at), Some(t(61)));
        assert_eq!(again, Some(("b.2".into(), t(61))));
        // A time to come is never held.
        assert_eq!(guard(now_please(500), Some(&last), "b.2", t(2)), (now_please(500), None));
    }
}
