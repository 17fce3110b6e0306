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
}

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
        return if hmac_ok(token, body, hex_sig) {
            Ok(Provider::Generic)
        } else {
            Err(WebhookError::BadSignature(Provider::Generic))
        };
    }
    Err(WebhookError::Unsigned)
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
    let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes keys of any length");
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
}
