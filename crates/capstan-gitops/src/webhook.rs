//! Push webhooks: verifying GitHub, Gitea and generic HMAC signatures and GitLab's token, and reading push payloads.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Who sent a verified hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
    Generic,
}

/// Why a hook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no signature: send X-Hub-Signature-256 (GitHub), X-Gitea-Signature (Gitea), X-Gitlab-Token (GitLab) or X-Signature: sha256=… (generic)")]
    Unsigned,
    #[error("the {0:?} signature does not match the body and the Sync's webhook secret")]
    BadSignature(Provider),
    #[error("X-Signature-Timestamp {0} is not within {MAX_SKEW_SECONDS} s of now (a replayed or delayed delivery?)")]
    Stale(String),
}

/// How far a generic sender's signed timestamp may be from Capstan's clock.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// What a push payload says, when it says it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    /// `refs/heads/main`.
    pub git_ref: Option<String>,
    /// The commit pushed.
    pub after: Option<String>,
}

fn hmac_ok(token: &[u8], body: &[u8], hex_sig: &str) -> bool {
    let Ok(sig) = hex::decode(hex_sig.trim()) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn const_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies a hook; `header` looks a header up by lower-case name.
pub fn verify<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    token: &[u8],
) -> Result<Provider, WebhookError> {
    if let Some(sig) = header("x-hub-signature-256") {
        let hex_sig = sig.strip_prefix("sha256=").unwrap_or("");
        return if hmac_ok(token, body, hex_sig) {
            Ok(Provider::GitHub)
        } else {
            Err(WebhookError::BadSignature(Provider::GitHub))
        };
    }
    if let Some(sig) = header("x-gitea-signature") {
        return if hmac_ok(token, body, sig) {
            Ok(Provider::Gitea)
        } else {
            Err(WebhookError::BadSignature(Provider::Gitea))
        };
    }
    if let Some(t) = header("x-gitlab-token") {
        return if const_eq(t.as_bytes(), token) {
            Ok(Provider::GitLab)
        } else {
            Err(WebhookError::BadSignature(Provider::GitLab))
        };
    }
    if let Some(sig) = header("x-signature") {
        let hex_sig = sig.strip_prefix("sha256=").unwrap_or(sig);
        // With a timestamp, the signature covers `<timestamp>.<body>` (as Stripe's and Slack's do) and an old
        // delivery cannot be replayed: the timestamp must be within five minutes of now.
        if let Some(ts) = header("x-signature-timestamp") {
            let mut signed = ts.as_bytes().to_vec();
            signed.push(b'.');
            signed.extend_from_slice(body);
            if !hmac_ok(token, &signed, hex_sig) {
                return Err(WebhookError::BadSignature(Provider::Generic));
            }
            let now = chrono::Utc::now().timestamp();
            return match ts.trim().parse::<i64>() {
                Ok(t) if (now - t).abs() <= MAX_SKEW_SECONDS => Ok(Provider::Generic),
                _ => Err(WebhookError::Stale(ts.chars().take(20).collect())),
            };
        }
        return if hmac_ok(token, body, hex_sig) {
            Ok(Provider::Generic)
        } else {
            Err(WebhookError::BadSignature(Provider::Generic))
        };
    }
    Err(WebhookError::Unsigned)
}

/// What identifies one delivery, for telling a replay from a new one: the sender's delivery id when it sends
/// one (`X-GitHub-Delivery`, `X-Gitea-Delivery`, `X-Gitlab-Event-UUID`, `X-Delivery-Id`), and the digest of the
/// signed body, which differs between any two pushes.
pub fn delivery_ids<'a>(header: impl Fn(&str) -> Option<&'a str>, body: &[u8]) -> Vec<String> {
    use sha2::Digest;
    let mut ids: Vec<String> = ["x-github-delivery", "x-gitea-delivery", "x-gitlab-event-uuid", "x-delivery-id"]
        .iter()
        .filter_map(|h| header(h))
        .map(|v| format!("id:{}", v.chars().take(100).collect::<String>()))
        .collect();
    ids.push(format!("body:{}", hex::encode(Sha256::digest(body))));
    ids
}

/// The deliveries one receiver accepted lately, each with all its ids: at most `capacity` deliveries, none older
/// than `window`.
#[derive(Debug)]
pub struct Deliveries {
    seen: std::collections::VecDeque<(std::time::Instant, Vec<String>)>,
    capacity: usize,
    window: std::time::Duration,
}

impl Deliveries {
    /// One hour and the last 1,000 deliveries.
    pub fn new() -> Deliveries {
        Deliveries::with(1_000, std::time::Duration::from_secs(3600))
    }

    pub fn with(capacity: usize, window: std::time::Duration) -> Deliveries {
        Deliveries { seen: std::collections::VecDeque::new(), capacity, window }
    }

    /// True when any of `ids` was accepted within the window (a replay); otherwise records them.
    pub fn replayed(&mut self, ids: &[String], now: std::time::Instant) -> bool {
        while self.seen.front().is_some_and(|(t, _)| now.duration_since(*t) > self.window) {
            self.seen.pop_front();
        }
        if ids.iter().any(|id| self.seen.iter().any(|(_, known)| known.contains(id))) {
            return true;
        }
        if self.seen.len() == self.capacity {
            self.seen.pop_front();
        }
        self.seen.push_back((now, ids.to_vec()));
        false
    }
}

impl Default for Deliveries {
    fn default() -> Self {
        Deliveries::new()
    }
}

/// Reads `ref` and `after` (or GitLab's `checkout_sha`) from a push payload; other payloads give an empty Push.
pub fn parse_push(body: &[u8]) -> Push {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return Push::default() };
    Push {
        git_ref: v["ref"].as_str().map(str::to_string),
        after: v["after"].as_str().or_else(|| v["checkout_sha"].as_str()).map(str::to_string),
    }
}

/// The HMAC-SHA256 of `body` in hex, as senders compute it (for tests and tools).
pub fn sign(token: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; were that ever refused, no signature would match (it fails closed).
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token) else { return String::new() };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
    }

    #[test]
    fn each_provider_verifies_and_rejects() {
        let body = br#"{"ref":"refs/heads/main","after":"abc"}"#;
        let sig = sign(b"s3cret", body);
        let gh = format!("sha256={sig}");
        assert_eq!(verify(headers(&[("x-hub-signature-256", &gh)]), body, b"s3cret"), Ok(Provider::GitHub));
        assert_eq!(verify(headers(&[("x-gitea-signature", &sig)]), body, b"s3cret"), Ok(Provider::Gitea));
        assert_eq!(verify(headers(&[("x-gitlab-token", "s3cret")]), body, b"s3cret"), Ok(Provider::GitLab));
        assert_eq!(verify(headers(&[("x-signature", &gh)]), body, b"s3cret"), Ok(Provider::Generic));
        assert_eq!(
            verify(headers(&[("x-hub-signature-256", &gh)]), body, b"other"),
            Err(WebhookError::BadSignature(Provider::GitHub))
        );
        assert_eq!(
            verify(headers(&[("x-gitlab-token", "nope")]), body, b"s3cret"),
            Err(WebhookError::BadSignature(Provider::GitLab))
        );
        let tampered = br#"{"ref":"refs/heads/evil","after":"abc"}"#;
        assert!(verify(headers(&[("x-hub-signature-256", &gh)]), tampered, b"s3cret").is_err());
        assert_eq!(verify(headers(&[]), body, b"s3cret"), Err(WebhookError::Unsigned));
        assert_eq!(parse_push(body), Push { git_ref: Some("refs/heads/main".into()), after: Some("abc".into()) });
    }

    #[test]
    fn a_generic_timestamp_is_signed_and_must_be_recent() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let now = chrono::Utc::now().timestamp().to_string();
        let signed = |ts: &str| format!("sha256={}", sign(b"k", &[ts.as_bytes(), b".", body].concat()));
        let sig = signed(&now);
        let h = [("x-signature", sig.as_str()), ("x-signature-timestamp", now.as_str())];
        assert_eq!(verify(headers(&h), body, b"k"), Ok(Provider::Generic));
        // The timestamp is part of what is signed: changing it breaks the signature.
        let later = (chrono::Utc::now().timestamp() + 1).to_string();
        let moved = [("x-signature", sig.as_str()), ("x-signature-timestamp", later.as_str())];
        assert_eq!(verify(headers(&moved), body, b"k"), Err(WebhookError::BadSignature(Provider::Generic)));
        // A delivery signed an hour ago is a replay.
        let old = (chrono::Utc::now().timestamp() - 3600).to_string();
        let old_sig = signed(&old);
        let replay = [("x-signature", old_sig.as_str()), ("x-signature-timestamp", old.as_str())];
        assert!(matches!(verify(headers(&replay), body, b"k"), Err(WebhookError::Stale(_))));
    }

    #[test]
    fn a_delivery_is_accepted_once() {
        let t0 = std::time::Instant::now();
        let mut d = Deliveries::with(4, std::time::Duration::from_secs(60));
        let first = delivery_ids(headers(&[("x-github-delivery", "d-1")]), b"push 1");
        assert_eq!(first.len(), 2);
        assert!(!d.replayed(&first, t0));
        assert!(d.replayed(&first, t0), "the same delivery again");
        let same_body = delivery_ids(headers(&[("x-github-delivery", "d-2")]), b"push 1");
        assert!(d.replayed(&same_body, t0), "a new id on a body already accepted");
        let second = delivery_ids(headers(&[("x-github-delivery", "d-3")]), b"push 2");
        assert!(!d.replayed(&second, t0));
        assert!(!d.replayed(&first, t0 + std::time::Duration::from_secs(61)), "forgotten after the window");
        // Bounded by deliveries, each with all its ids: old ones go first, whole.
        for i in 0..10 {
            assert!(!d.replayed(&[format!("id:{i}"), format!("body:{i}")], t0 + std::time::Duration::from_secs(62)));
        }
        assert_eq!(d.seen.len(), 4);
        assert!(d.replayed(&["body:9".to_string()], t0 + std::time::Duration::from_secs(62)));
        assert!(!d.replayed(&["body:5".to_string()], t0 + std::time::Duration::from_secs(62)), "forgotten whole");
    }
}
