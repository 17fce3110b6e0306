//! Which rule of which HTTPRoute a request takes on one listener, with Gateway API's precedence.
//!
//! A route's rules are compiled once into entries (one per effective hostname and match), ordered as the
//! specification orders them: the most specific hostname first (exact before wildcard, longer before shorter, any
//! host last), then the path (Exact, then RegularExpression — a place the specification leaves to
//! implementations — then the longest PathPrefix), a method match, the most
//! header matches, the most query matches, the oldest route, the route's `namespace/name`, and finally rule and
//! match order. A request takes the first entry that matches it; a hostname with no matching rule falls through
//! to less specific ones.

use std::collections::HashMap;
use std::sync::Arc;

use capstan_model::gateway::{HttpRouteMatch, PathMatchType, StringMatchType};
use hyper::HeaderMap;

/// A route, as precedence needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteId {
    pub namespace: String,
    pub name: String,
    /// Milliseconds since the epoch: older routes win ties.
    pub created_ms: i64,
}

/// A hostname a route serves on a listener: one exact name, a `*.` wildcard, or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*`, with its leading dot: `.example.com`.
    Wildcard(String),
    Any,
}

/// As Gateway API writes it: `shop.example.com`, `*.example.com`, or `*` for every name.
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

impl HostPattern {
    pub fn parse(host: &str) -> HostPattern {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
            None => HostPattern::Exact(host),
        }
    }

    /// Whether a request's host (lower-case, without its port) falls under this pattern. A wildcard covers one
    /// label or more, never the bare suffix.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            HostPattern::Any => true,
        }
    }

    /// Where a listener's hostname and a route's meet: the more specific of the two when one covers the other.
    pub fn intersect(&self, other: &HostPattern) -> Option<HostPattern> {
        match (self, other) {
            (HostPattern::Any, o) | (o, HostPattern::Any) => Some(o.clone()),
            (HostPattern::Exact(a), HostPattern::Exact(b)) => (a == b).then(|| self.clone()),
            (HostPattern::Exact(h), w @ HostPattern::Wildcard(_))
            | (w @ HostPattern::Wildcard(_), HostPattern::Exact(h)) => {
                w.matches(h).then(|| HostPattern::Exact(h.clone()))
            }
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                if a.ends_with(b.as_str()) {
                    Some(self.clone())
                } else if b.ends_with(a.as_str()) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }

    /// Precedence: exact names first, then wildcards, longer before shorter; any host last.
    pub(crate) fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            HostPattern::Exact(h) => (0, std::cmp::Reverse(h.len())),
            HostPattern::Wildcard(s) => (1, std::cmp::Reverse(s.len())),
            HostPattern::Any => (2, std::cmp::Reverse(0)),
        }
    }
}

#[derive(Debug, Clone)]
enum PathMatcher {
    Exact(String),
    /// Without a trailing slash (`/` stays `/`): matches whole path segments.
    Prefix(String),
    Regex(regex::Regex),
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => p == path,
            PathMatcher::Prefix(p) if p == "/" => true,
            PathMatcher::Prefix(p) => {
                path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }

    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            PathMatcher::Exact(p) => (0, std::cmp::Reverse(p.len())),
            PathMatcher::Regex(r) => (1, std::cmp::Reverse(r.as_str().len())),
            PathMatcher::Prefix(p) => (2, std::cmp::Reverse(p.len())),
        }
    }
}

#[derive(Debug, Clone)]
enum ValueMatcher {
    Exact(String),
    Regex(regex::Regex),
}

impl ValueMatcher {
    fn new(kind: StringMatchType, value: &str) -> Result<ValueMatcher, String> {
        Ok(match kind {
            StringMatchType::Exact => ValueMatcher::Exact(value.to_string()),
            StringMatchType::RegularExpression => ValueMatcher::Regex(whole(value)?),
        })
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatcher::Exact(e) => e == v,
            ValueMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// A regular expression that must match the whole value, as Gateway API's conformance expects (compiled as the
/// model validated it, with the same size limit).
fn whole(re: &str) -> Result<regex::Regex, String> {
    capstan_model::gateway::whole_regex(re)
}

/// One `HTTPRouteMatch`, compiled.
#[derive(Debug, Clone)]
pub struct Matcher {
    path: PathMatcher,
    /// Lower-case names.
    headers: Vec<(String, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    method: Option<String>,
}

impl Matcher {
    /// Compiles a match; an absent path is `PathPrefix /`.
    pub fn new(m: &HttpRouteMatch) -> Result<Matcher, String> {
        let path = match &m.path {
            None => PathMatcher::Prefix("/".into()),
            Some(p) => match p.type_ {
                PathMatchType::Exact => PathMatcher::Exact(p.value.clone()),
                PathMatchType::PathPrefix => {
                    let trimmed = p.value.trim_end_matches('/');
                    PathMatcher::Prefix(if trimmed.is_empty() { "/".into() } else { trimmed.to_string() })
                }
                PathMatchType::RegularExpression => PathMatcher::Regex(whole(&p.value)?),
            },
        };
        let headers = m
            .headers
            .iter()
            .map(|h| Ok((h.name.to_ascii_lowercase(), ValueMatcher::new(h.type_, &h.value)?)))
            .collect::<Result<_, String>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), ValueMatcher::new(q.type_, &q.value)?)))
            .collect::<Result<_, String>>()?;
        Ok(Matcher { path, headers, query, method: m.method.clone() })
    }

    /// Every path (the match of a rule that names none).
    pub fn any() -> Matcher {
        Matcher { path: PathMatcher::Prefix("/".into()), headers: Vec::new(), query: Vec::new(), method: None }
    }

    /// The matched prefix, for `ReplacePrefixMatch` (None unless the path matcher is a prefix).
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Prefix(p) => Some(p),
            _ => None,
        }
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        if !self.path.matches(req.path) {
            return false;
        }
        if self.method.as_deref().is_some_and(|m| m != req.method) {
            return false;
        }
        for (name, m) in &self.headers {
            // Repeated headers are matched on their first value, as most implementations do.
            let Some(v) = req.headers.get(name.as_str()).and_then(|v| v.to_str().ok()) else { return false };
            if !m.matches(v) {
                return false;
            }
        }
        for (name, m) in &self.query {
            let first = req.query.and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                })
            });
            if !first.is_some_and(|v| m.matches(v)) {
                return false;
            }
        }
        true
    }

    fn rank(&self) -> impl Ord {
        (
            self.path.rank(),
            std::cmp::Reverse(self.method.is_some()),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(self.query.len()),
        )
    }
}

/// A request as routing sees it: the host lower-case and without its port.
pub struct Request<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
}

/// Lower-cases a `Host` header's name and drops its port (and an IPv6 literal's brackets are kept).
pub fn host_of(header: &str) -> std::borrow::Cow<'_, str> {
    let h = match header.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => header,
    };
    let h = h.trim_end_matches('.');
    // Most clients write it lower-case already: no copy then.
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// One compiled match of one rule of one route, for one hostname.
#[derive(Debug, Clone)]
pub struct Entry<A> {
    pub route: Arc<RouteId>,
    pub rule: usize,
    pub host: HostPattern,
    pub matcher: Arc<Matcher>,
    match_index: usize,
    /// What the rule does: filters and backends, shared by its matches.
    pub action: Arc<A>,
}

impl<A> Entry<A> {
    pub fn new(
        route: Arc<RouteId>,
        rule: usize,
        match_index: usize,
        host: HostPattern,
        matcher: Arc<Matcher>,
        action: Arc<A>,
    ) -> Self {
        Entry { route, rule, host, matcher, match_index, action }
    }
}

/// The routes of one listener, ordered by precedence; exact host names are looked up directly.
#[derive(Debug)]
pub struct RouteTable<A> {
    exact: HashMap<String, Vec<Entry<A>>>,
    /// Wildcards and any-host entries, in precedence order.
    rest: Vec<Entry<A>>,
}

impl<A> Default for RouteTable<A> {
    fn default() -> Self {
        RouteTable { exact: HashMap::new(), rest: Vec::new() }
    }
}

impl<A> RouteTable<A> {
    pub fn new(mut entries: Vec<Entry<A>>) -> RouteTable<A> {
        entries.sort_by(|a, b| {
            a.host
                .rank()
                .cmp(&b.host.rank())
                .then_with(|| a.matcher.rank().cmp(&b.matcher.rank()))
                .then_with(|| a.route.created_ms.cmp(&b.route.created_ms))
                .then_with(|| (&a.route.namespace, &a.route.name).cmp(&(&b.route.namespace, &b.route.name)))
                .then_with(|| (a.rule, a.match_index).cmp(&(b.rule, b.match_index)))
        });
        let mut table = RouteTable::default();
        for e in entries {
            match &e.host {
                HostPattern::Exact(h) => table.exact.entry(h.clone()).or_default().push(e),
                _ => table.rest.push(e),
            }
        }
        table
    }

    /// The entry a request takes, if any.
    pub fn find(&self, req: &Request<'_>) -> Option<&Entry<A>> {
        let exact = self.exact.get(req.host).into_iter().flatten();
        exact.chain(self.rest.iter().filter(|e| e.host.matches(req.host))).find(|e| e.matcher.matches(req))
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<A>> {
        self.exact.values().flatten().chain(self.rest.iter())
    }
}

#[cfg(test)]
mod tests {
    //! Cases modelled on Gateway API's conformance suite (HTTPRouteMatching, HTTPRouteMatchingAcrossRoutes,
    //! HTTPRouteHostnameIntersection, HTTPRouteHeaderMatching, HTTPRouteQueryParamMatching,
    //! HTTPRouteMethodMatching, HTTPRoutePathMatchOrder), written here.
    use super::*;
    use capstan_model::gateway::{HttpHeaderMatch, HttpPathMatch, HttpQueryParamMatch};

    fn route(ns: &str, name: &str, created_ms: i64) -> Arc<RouteId> {
        Arc::new(RouteId { namespace: ns.into(), name: name.into(), created_ms })
    }

    fn path(t: PathMatchType, v: &str) -> HttpRouteMatch {
        HttpRouteMatch { path: Some(HttpPathMatch { type_: t, value: v.into() }), ..Default::default() }
    }

    fn entry(r: &Arc<RouteId>, host: &str, m: HttpRouteMatch, label: &str) -> Entry<String> {
        let host = if host.is_empty() { HostPattern::Any } else { HostPattern::parse(host) };
        Entry::new(r.clone(), 0, 0, host, Arc::new(Matcher::new(&m).unwrap()), Arc::new(label.to_string()))
    }

    fn find<'a>(
        t: &'a RouteTable<String>,
        host: &str,
        target: &str,
        method: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'a str> {
        let (p, q) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let req = Request { host: &host_of(host), path: p, query: q, method, headers: &map };
        t.find(&req).map(|e| e.action.as_str())
    }

    #[test]
    fn exact_beats_prefix_and_longer_prefixes_beat_shorter_ones_by_segment() {
        let r = route("default", "r", 0);
        let t = RouteTable::new(vec![
            entry(&r, "", path(PathMatchType::PathPrefix, "/"), "root"),
            entry(&r, "", path(PathMatchType::PathPrefix, "/one"), "one"),
            entry(&r, "", path(PathMatchType::PathPrefix, "/one/two/"), "two"),
            entry(&r, "", path(PathMatchType::Exact, "/one/two"), "exact"),
            entry(&r, "", path(PathMatchType::RegularExpression, "/r[0-9]+"), "regex"),
        ]);
        assert_eq!(find(&t, "x", "/", "GET", &[]), Some("root"));
        assert_eq!(find(&t, "x", "/one", "GET", &[]), Some("one"));
        assert_eq!(find(&t, "x", "/one/", "GET", &[]), Some("one"));
        assert_eq!(find(&t, "x", "/onex", "GET", &[]), Some("root"), "a prefix matches whole segments");
        assert_eq!(find(&t, "x", "/one/two", "GET", &[]), Some("exact"));
        assert_eq!(find(&t, "x", "/one/two/three", "GET", &[]), Some("two"));
        assert_eq!(find(&t, "x", "/one/two/", "GET", &[]), Some("two"), "the trailing slash of a prefix is not needed");
        assert_eq!(find(&t, "x", "/r42", "GET", &[]), Some("regex"));
        assert_eq!(find(&t, "x", "/r42/x", "GET", &[]), Some("root"), "a regular expression matches the whole path");
    }

    #[test]
    fn the_most_specific_hostname_wins_and_falls_through_when_it_has_no_match() {
        let r = route("default", "r", 0);
        let t = RouteTable::new(vec![
            entry(&r, "", path(PathMatchType::PathPrefix, "/"), "any"),
            entry(&r, "*.example.com", path(PathMatchType::PathPrefix, "/"), "wild"),
            entry(&r, "*.foo.example.com", path(PathMatchType::PathPrefix, "/"), "wild-foo"),
            entry(&r, "bar.foo.example.com", path(PathMatchType::PathPrefix, "/only"), "exact"),
        ]);
        assert_eq!(find(&t, "bar.foo.example.com:8080", "/only/x", "GET", &[]), Some("exact"));
        assert_eq!(find(&t, "BAR.foo.example.com", "/other", "GET", &[]), Some("wild-foo"), "falls through");
        assert_eq!(find(&t, "a.example.com", "/", "GET", &[]), Some("wild"));
        assert_eq!(find(&t, "a.b.example.com", "/", "GET", &[]), Some("wild"), "a wildcard covers several labels");
        assert_eq!(find(&t, "example.com", "/", "GET", &[]), Some("any"), "never the bare suffix");
        assert_eq!(find(&t, "other.org", "/", "GET", &[]), Some("any"));
    }

    #[test]
    fn across_routes_method_then_headers_then_query_then_age_then_name_decide() {
        let old = route("default", "zzz-old", 1);
        let young = route("default", "aaa-young", 2);
        let same_age = route("default", "bbb", 2);
        let headers = |n: usize| HttpRouteMatch {
            headers: (0..n)
                .map(|i| HttpHeaderMatch { type_: StringMatchType::Exact, name: format!("X-H{i}"), value: "v".into() })
                .collect(),
            ..Default::default()
        };
        let mut with_method = path(PathMatchType::PathPrefix, "/");
        with_method.method = Some("POST".into());
        let mut with_query = path(PathMatchType::PathPrefix, "/");
        with_query.query_params = vec![HttpQueryParamMatch {
            type_: StringMatchType::RegularExpression,
            name: "v".into(),
            value: "[0-9]+".into(),
        }];
        let t = RouteTable::new(vec![
            entry(&young, "", headers(0), "young"),
            entry(&old, "", headers(0), "old"),
            entry(&same_age, "", headers(0), "same-age"),
            entry(&young, "", headers(1), "one-header"),
            entry(&young, "", headers(2), "two-headers"),
            entry(&young, "", with_method, "post"),
            entry(&young, "", with_query, "query"),
        ]);
        assert_eq!(find(&t, "x", "/", "GET", &[]), Some("old"), "the oldest route wins a tie");
        assert_eq!(find(&t, "x", "/", "POST", &[("x-h0", "v"), ("x-h1", "v")]), Some("post"), "method first");
        assert_eq!(find(&t, "x", "/", "GET", &[("x-h0", "v"), ("X-H1", "v")]), Some("two-headers"));
        assert_eq!(find(&t, "x", "/", "GET", &[("x-h0", "v")]), Some("one-header"));
        assert_eq!(find(&t, "x", "/", "GET", &[("x-h0", "wrong")]), Some("old"));
        assert_eq!(find(&t, "x", "/?a=1&v=42", "GET", &[]), Some("query"));
        assert_eq!(find(&t, "x", "/?v=4x2", "GET", &[]), Some("old"), "the expression matches the whole value");
        let tie = RouteTable::new(vec![entry(&same_age, "", headers(0), "bbb"), entry(&young, "", headers(0), "aaa")]);
        assert_eq!(find(&tie, "x", "/", "GET", &[]), Some("aaa"), "then by namespace/name");
    }

    #[test]
    fn listener_and_route_hostnames_intersect_to_the_more_specific() {
        let p = HostPattern::parse;
        assert_eq!(p("*.example.com").intersect(&p("foo.example.com")), Some(p("foo.example.com")));
        assert_eq!(p("foo.example.com").intersect(&p("*.example.com")), Some(p("foo.example.com")));
        assert_eq!(p("*.example.com").intersect(&p("*.foo.example.com")), Some(p("*.foo.example.com")));
        assert_eq!(p("*.foo.example.com").intersect(&p("*.example.com")), Some(p("*.foo.example.com")));
        assert_eq!(p("*.example.com").intersect(&p("example.com")), None);
        assert_eq!(p("a.example.com").intersect(&p("b.example.com")), None);
        assert_eq!(HostPattern::Any.intersect(&p("x.org")), Some(p("x.org")));
        assert_eq!(host_of("Shop.Example.com:443"), "shop.example.com");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("example.com."), "example.com");
    }

    #[test]
    fn no_entry_is_no_route() {
        let r = route("default", "r", 0);
        let t = RouteTable::new(vec![entry(&r, "a.example.com", path(PathMatchType::Exact, "/x"), "x")]);
        assert_eq!(find(&t, "a.example.com", "/y", "GET", &[]), None);
        assert_eq!(find(&t, "b.example.com", "/x", "GET", &[]), None);
        assert_eq!(find(&RouteTable::default(), "a.example.com", "/x", "GET", &[]), None);
    }
}
