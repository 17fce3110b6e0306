//! Named API tokens: made with a role and an optional namespace and expiry, shown once, kept only as SHA-256
//! hashes in the store, revoked by name.

use std::collections::HashMap;
use std::sync::RwLock;

use capstan_store::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::{Grant, Role};

/// The prefix of the store records holding tokens.
const RECORD_PREFIX: &str = "token/";
/// What every token starts with, so that scanners (and people) recognise one.
pub const TOKEN_PREFIX: &str = "cst_";
/// The identity of the data directory's own token.
pub const ADMIN_USER: &str = "admin";

/// A token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// SHA-256 of the token, in hex.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// `active`, `expired` or `revoked` at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        }
    }

    /// The record as `token list` shows it: without the hash.
    pub fn public(&self, now: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "role": self.role, "namespace": self.namespace,
            "createdAt": self.created_at, "expiresAt": self.expires_at, "revokedAt": self.revoked_at,
            "state": self.state(now),
        })
    }
}

/// Why a token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token named {0} exists; revoke it first (`capstan token revoke {0}`) or choose another name")]
    Exists(String),
    #[error("no token named {0}; `capstan token list` shows them")]
    NotFound(String),
    #[error("token {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tokens, read from the store at start and kept in memory by hash.
#[derive(Default)]
pub struct Tokens {
    by_hash: RwLock<HashMap<String, TokenRecord>>,
    /// Bumped at every revocation: open streams check whether their token still works.
    revocations: tokio::sync::watch::Sender<u64>,
}

fn hash_of(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new token's text: the prefix and 32 random bytes in hex.
fn new_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| TokenError::Invalid(format!("no randomness: {e}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// Whether `name` may name a token (or a namespace a token is bound to): a DNS label.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Tokens {
    /// Every token record in the store. A record that does not read is an error: a token that silently stopped
    /// existing would be a revocation nobody asked for, and one read wrong might grant too much.
    pub fn load(store: &Store) -> Result<Tokens, TokenError> {
        let mut by_hash = HashMap::new();
        for (key, value) in store.records(RECORD_PREFIX)? {
            let record: TokenRecord = serde_json::from_value(value)
                .map_err(|e| TokenError::Invalid(format!("stored token record {key} does not read: {e}")))?;
            by_hash.insert(record.hash.clone(), record);
        }
        Ok(Tokens { by_hash: RwLock::new(by_hash), revocations: Default::default() })
    }

    /// The grant of a presented token, if it is known, not revoked and not expired.
    pub fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Option<Grant> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let all = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
        let record = all.get(&hash_of(token))?;
        (record.state(now) == "active").then(|| Grant {
            user: record.name.clone(),
            role: record.role,
            namespace: record.namespace.clone(),
            token: Some(crate::access::TokenRef { hash: record.hash.clone(), expires_at: record.expires_at }),
        })
    }

    /// Resolves when the grant's token stops working: revoked, or expired. Never for the data directory's token.
    pub async fn ended(&self, grant: &Grant) {
        let Some(token) = &grant.token else { return std::future::pending().await };
        let mut revocations = self.revocations.subscribe();
        let expiry = token.expires_at.map(|t| (t - Utc::now()).to_std().unwrap_or_default());
        let expired = async {
            match expiry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            tokio::select! {
                _ = &mut expired => return,
                changed = revocations.changed() => {
                    let active = {
                        let all = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
                        all.get(&token.hash).is_some_and(|r| r.state(Utc::now()) == "active")
                    };
                    if changed.is_err() || !active {
                        return;
                    }
                }
            }
        }
    }

    /// Makes a token; returns it (the only time it is seen) and its record.
    pub fn create(
        &self,
        store: &Store,
        name: &str,
        role: Role,
        namespace: Option<String>,
        ttl: Option<std::time::Duration>,
        now: DateTime<Utc>,
    ) -> Result<(String, TokenRecord), TokenError> {
        if !valid_name(name) || name == ADMIN_USER {
            return Err(TokenError::Invalid(format!(
                "token name `{name}`: use lowercase letters, digits and '-', at most 63 (`{ADMIN_USER}` is the data \
                 directory's own token)"
            )));
        }
        if let Some(ns) = namespace.as_deref().filter(|ns| !valid_name(ns)) {
            return Err(TokenError::Invalid(format!("namespace `{ns}` is not a valid namespace name")));
        }
        let expires_at = match ttl {
            Some(d) => Some(
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| TokenError::Invalid("ttl: too long".into()))?,
            ),
            None => None,
        };
        let mut all = self.by_hash.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = all.values().find(|r| r.name == name) {
            if old.revoked_at.is_none() {
                return Err(TokenError::Exists(name.into()));
            }
        }
        let token = new_token()?;
        let record = TokenRecord {
            name: name.into(),
            role,
            namespace,
            hash: hash_of(&token),
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        let value = serde_json::to_value(&record).map_err(|e| TokenError::Invalid(e.to_string()))?;
        store.put_record(&format!("{RECORD_PREFIX}{name}"), &value)?;
        all.retain(|_, r| r.name != name);
        all.insert(record.hash.clone(), record.clone());
        Ok((token, record))
    }

    /// Revokes a token by name; it is kept (as revoked) so that `token list` and the audit log still name it.
    pub fn revoke(&self, store: &Store, name: &str, now: DateTime<Utc>) -> Result<TokenRecord, TokenError> {
        let mut all = self.by_hash.write().unwrap_or_else(|p| p.into_inner());
        let Some(record) = all.values_mut().find(|r| r.name == name) else {
            return Err(TokenError::NotFound(name.into()));
        };
        if record.revoked_at.is_some() {
            return Err(TokenError::AlreadyRevoked(name.into()));
        }
        let mut revoked = record.clone();
        revoked.revoked_at = Some(now);
        let value = serde_json::to_value(&revoked).map_err(|e| TokenError::Invalid(e.to_string()))?;
        store.put_record(&format!("{RECORD_PREFIX}{name}"), &value)?;
        *record = revoked.clone();
        self.revocations.send_modify(|n| *n += 1);
        Ok(revoked)
    }

    /// Every token, by name.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut all: Vec<TokenRecord> =
            self.by_hash.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_token_is_kept_as_a_hash_works_until_revoked_and_survives_a_reload() {
        let (_dir, store) = store();
        let tokens = Tokens::load(&store).unwrap();
        let now = Utc::now();
        let (token, record) = tokens.create(&store, "ci", Role::Deployer, Some("team-a".into()), None, now).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        let stored = store.records("token/").unwrap();
        assert!(!stored[0].1.to_string().contains(&token), "only the hash is stored");
        assert_eq!(record.hash, hash_of(&token));
        let grant = tokens.authenticate(&token, now).unwrap();
        assert_eq!(
            (grant.user.as_str(), grant.role, grant.namespace.as_deref()),
            ("ci", Role::Deployer, Some("team-a"))
        );
        assert!(matches!(tokens.create(&store, "ci", Role::Viewer, None, None, now), Err(TokenError::Exists(_))));

        let reloaded = Tokens::load(&store).unwrap();
        assert_eq!(reloaded.authenticate(&token, now), Some(grant));
        reloaded.revoke(&store, "ci", now).unwrap();
        assert_eq!(reloaded.authenticate(&token, now), None);
        assert!(matches!(reloaded.revoke(&store, "ci", now), Err(TokenError::AlreadyRevoked(_))));
        assert_eq!(Tokens::load(&store).unwrap().authenticate(&token, now), None, "revoked for good");
        // A revoked name may be used again, with a new token.
        let (again, _) = reloaded.create(&store, "ci", Role::Viewer, None, None, now).unwrap();
        assert_ne!(again, token);
        assert_eq!(reloaded.authenticate(&token, now), None);
        assert_eq!(reloaded.authenticate(&again, now).map(|g| g.role), Some(Role::Viewer));
    }

    #[test]
    fn expired_unknown_and_malformed_tokens_are_refused_alike() {
        let (_dir, store) = store();
        let tokens = Tokens::load(&store).unwrap();
        let now = Utc::now();
        let ttl = Some(std::time::Duration::from_secs(60));
        let (token, _) = tokens.create(&store, "short", Role::Viewer, None, ttl, now).unwrap();
        assert!(tokens.authenticate(&token, now).is_some());
        assert_eq!(tokens.authenticate(&token, now + chrono::Duration::seconds(61)), None);
        assert_eq!(tokens.list()[0].state(now + chrono::Duration::seconds(61)), "expired");
        assert_eq!(tokens.authenticate("cst_0000", now), None);
        assert_eq!(tokens.authenticate("", now), None);
        assert_eq!(tokens.authenticate("\u{0}é", now), None);
        for bad in ["Admin", "admin", "-x", "a b", &"x".repeat(64)] {
            assert!(
                matches!(tokens.create(&store, bad, Role::Viewer, None, None, now), Err(TokenError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            tokens.create(&store, "ok", Role::Viewer, Some("Bad_NS".into()), None, now),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(tokens.revoke(&store, "nobody", now), Err(TokenError::NotFound(_))));
    }

    #[test]
    fn a_damaged_token_record_stops_the_load() {
        let (_dir, store) = store();
        store.put_record("token/x", &serde_json::json!({"name": "x"})).unwrap();
        assert!(matches!(Tokens::load(&store), Err(TokenError::Invalid(_))));
    }
}
