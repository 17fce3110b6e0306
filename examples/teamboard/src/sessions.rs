//! Who is asking: browser sessions, held in this node's memory only (a user whose requests reach another node must
//! sign in again, which is why Teamboard needs a sticky load balancer), and personal access tokens for scripts,
//! which any node accepts (kept in the database by their hash, as Jira keeps its tokens).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::{Error, Shared};

/// The session cookie's name.
pub const COOKIE: &str = "TEAMBOARD_SESSION";

/// Sessions idle for longer than this are forgotten.
const IDLE: Duration = Duration::from_secs(8 * 3600);

struct Entry {
    user: String,
    last_seen: Instant,
}

/// This node's sessions.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
    tokens: Mutex<HashMap<String, String>>,
}

impl Sessions {
    /// Starts a session for `user`, returning its token; fails only when the OS has no entropy to give.
    pub fn create(&self, user: &str) -> Result<String, Error> {
        let token = Self::new_token();
        if token.is_empty() {
            return Err(Error::Io("no entropy for a session token".into()));
        }
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, e| now.duration_since(e.last_seen) < IDLE);
        map.insert(token.clone(), Entry { user: user.to_string(), last_seen: now });
        Ok(token)
    }

    /// The user holding `token`, refreshing its idle timer.
    pub fn user(&self, token: &str) -> Option<String> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get_mut(token)?;
        if e.last_seen.elapsed() >= IDLE {
            map.remove(token);
            return None;
        }
        e.last_seen = Instant::now();
        Some(e.user.clone())
    }

    /// A new random token: 24 bytes as hex; empty when the OS has no entropy to give.
    pub fn new_token() -> String {
        let mut bytes = [0u8; 24];
        match getrandom::getrandom(&mut bytes) {
            Ok(()) => hex::encode(bytes),
            Err(_) => String::new(),
        }
    }

    /// The owner of a personal access token, remembered on this node after the first lookup.
    pub async fn token_user(&self, pool: &deadpool_postgres::Pool, token: &str) -> Result<Option<String>, Error> {
        let hash = token_hash(token);
        if let Some(u) = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&hash) {
            return Ok(Some(u.clone()));
        }
        let user = crate::db::token_user(pool, &hash).await?;
        if let Some(u) = &user {
            self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, u.clone());
        }
        Ok(user)
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no one is signed in here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts.headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    })
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The signed-in user, if any.
pub struct MaybeUser(pub Option<String>);

/// The signed-in user; requests without one are refused with 401.
pub struct User(pub String);

impl FromRequestParts<Shared> for MaybeUser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        Ok(MaybeUser(cookie(parts, COOKIE).and_then(|t| state.sessions.user(&t))))
    }
}

impl FromRequestParts<Shared> for User {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        if let Some(user) = cookie(parts, COOKIE).and_then(|t| state.sessions.user(&t)) {
            return Ok(User(user));
        }
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match bearer {
            Some(token) => state.sessions.token_user(&state.pool, token).await?.map(User).ok_or(Error::Unauthorized),
            None => Err(Error::Unauthorized),
        }
    }
}

/// The hash under which a token is stored.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Checks a user name: 1–40 letters, digits, `.`, `-` or `_`.
pub fn valid_user(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.len() > 40 || !name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)) {
        return Err(Error::BadRequest(format!("user name {name:?}: use 1 to 40 letters, digits, '.', '-' or '_'")));
    }
    Ok(name.to_string())
}
