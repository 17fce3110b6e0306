//! Who may do what: roles bound to one namespace or all, the rule every API route declares, and the check that
//! applies them before a handler runs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads everything but Secret values.
    Viewer,
    /// A viewer that also applies, deletes, rolls out, syncs, scales and acknowledges incidents.
    Deployer,
    /// A viewer that also reads Secret values.
    SecretsReader,
    /// Everything, including tokens, database restores and shutdown.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Deployer, Role::SecretsReader, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::SecretsReader => "secrets-reader",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether the role includes `verb` (in the namespaces it is bound to).
    pub fn includes(self, verb: Verb) -> bool {
        match verb {
            Verb::Read => true,
            Verb::Write => matches!(self, Role::Deployer | Role::Admin),
            Verb::ReadSecrets => matches!(self, Role::SecretsReader | Role::Admin),
            Verb::Admin => self == Role::Admin,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of right a route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Read objects, events, logs, metrics (never Secret values).
    Read,
    /// Read Secret values.
    ReadSecrets,
    /// Change objects and ask for actions on them.
    Write,
    /// Administer: tokens, restores, the audit log, encryption keys, shutdown.
    Admin,
}

/// Whose rights a request holds: a token's name, its role and the namespace it is bound to (`None`: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    pub role: Role,
    pub namespace: Option<String>,
    /// The named token it came from (`None`: the data directory's token), for streams to end when it does.
    pub token: Option<TokenRef>,
}

/// Which named token a grant came from, and until when it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    pub hash: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Grant {
    /// The administrator of every namespace (the data directory's own token).
    pub fn admin(user: &str) -> Grant {
        Grant { user: user.into(), role: Role::Admin, namespace: None, token: None }
    }

    /// Whether the grant includes `verb` in namespace `ns` (`None`: in every namespace at once).
    pub fn allows(&self, verb: Verb, ns: Option<&str>) -> bool {
        let in_scope = match (&self.namespace, ns) {
            (None, _) => true,
            (Some(bound), Some(ns)) => bound == ns,
            (Some(_), None) => false,
        };
        in_scope && self.role.includes(verb)
    }

    /// Whether the grant reads objects of namespace `ns`.
    pub fn sees(&self, ns: &str) -> bool {
        self.allows(Verb::Read, Some(ns))
    }

    /// The role and its binding as the audit log and refusals show them: `deployer` or `deployer in team-a`.
    pub fn scope(&self) -> String {
        match &self.namespace {
            None => self.role.to_string(),
            Some(ns) => format!("{} in {ns}", self.role),
        }
    }
}

/// Where a route's namespace comes from, for the check made before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The `{ns}` of the path: the check is complete before the handler runs.
    Namespace,
    /// Several namespaces (a list, a watch, a batch): any binding passes the door, and the handler keeps to what
    /// the grant covers (filters lists, refuses each object of a batch outside it).
    Each,
    /// Every namespace at once: only a grant bound to all passes.
    All,
}

/// The right a route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No token: health, version, Prometheus scraping and discovery, webhooks (which carry their own HMAC).
    Public,
    /// The dashboard's pages and actions: not a bearer token but the session cookie, which the handler checks (with
    /// the role and, for a change, the Origin); without one a page goes to the sign-in and the rest answer 401.
    Session,
    Needs(Verb, Scope),
}

/// One route and its rule, as registered.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub method: Method,
    pub path: String,
    pub rule: Rule,
}

/// The rules by method and route pattern (axum's `MatchedPath`).
#[derive(Debug, Default)]
pub struct Rules(HashMap<(Method, String), Rule>);

impl Rules {
    pub fn get(&self, method: &Method, path: &str) -> Option<Rule> {
        // HEAD is answered by a GET route.
        let method = if method == Method::HEAD { &Method::GET } else { method };
        self.0.get(&(method.clone(), path.to_string())).copied()
    }
}

/// A router whose every route is registered with its rule: a route cannot be added without saying who may call
/// it, and the table is what the authorization check and the role × route test read.
pub struct Routes<S> {
    router: Router<S>,
    table: Vec<RouteRule>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes { router: Router::new(), table: Vec::new() }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Adds `handler` for `method` on `path` under `rule`.
    pub fn add<H, T>(mut self, method: Method, path: &str, handler: H, rule: Rule) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        self.router = self.router.route(path, on(filter, handler));
        self.table.push(RouteRule { method, path: path.to_string(), rule });
        self
    }

    /// Adds every route of `other`, its paths under `prefix`.
    pub fn nest(mut self, prefix: &str, other: Routes<S>) -> Self {
        self.router = self.router.nest(prefix, other.router);
        self.table.extend(other.table.into_iter().map(|mut r| {
            r.path = format!("{prefix}{}", r.path);
            r
        }));
        self
    }

    /// Adds every route of `other`, at their own paths.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// The table of every route and its rule.
    pub fn table(&self) -> &[RouteRule] {
        &self.table
    }

    /// The router and the rules to check it with.
    pub fn finish(self) -> (Router<S>, Arc<Rules>) {
        let rules = self.table.into_iter().map(|r| ((r.method, r.path), r.rule)).collect();
        (self.router, Arc::new(Rules(rules)))
    }
}

/// The check made before a handler runs: whether `grant` may call a route under `rule`, with `ns` the path's
/// `{ns}` if it has one.
pub fn admits(grant: &Grant, rule: Rule, ns: Option<&str>) -> bool {
    match rule {
        // The session's handler decides.
        Rule::Public | Rule::Session => true,
        Rule::Needs(verb, Scope::Namespace) => grant.allows(verb, ns),
        Rule::Needs(verb, Scope::All) => grant.allows(verb, None),
        Rule::Needs(verb, Scope::Each) => grant.role.includes(verb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, ns: Option<&str>) -> Grant {
        Grant { user: "u".into(), role, namespace: ns.map(str::to_string), token: None }
    }

    #[test]
    fn roles_include_what_the_docs_say() {
        let table = [
            (Role::Viewer, [true, false, false, false]),
            (Role::Deployer, [true, false, true, false]),
            (Role::SecretsReader, [true, true, false, false]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, rights) in table {
            let got = [Verb::Read, Verb::ReadSecrets, Verb::Write, Verb::Admin].map(|v| role.includes(v));
            assert_eq!(got, rights, "{role}");
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_namespaced_grant_stays_in_its_namespace() {
        let g = grant(Role::Deployer, Some("team-a"));
        assert!(g.allows(Verb::Write, Some("team-a")));
        assert!(!g.allows(Verb::Write, Some("team-b")));
        assert!(!g.allows(Verb::Read, None), "every namespace at once is more than one");
        assert!(admits(&g, Rule::Needs(Verb::Write, Scope::Each), None), "the handler keeps to team-a");
        assert!(!admits(&g, Rule::Needs(Verb::Write, Scope::All), None));
        assert!(!admits(&grant(Role::Viewer, None), Rule::Needs(Verb::Write, Scope::Each), None));
        assert!(admits(&grant(Role::Viewer, None), Rule::Needs(Verb::Read, Scope::All), None));
        assert_eq!(g.scope(), "deployer in team-a");
        assert_eq!(grant(Role::Admin, None).scope(), "admin");
    }
}
