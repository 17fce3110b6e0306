//! The dashboard's pages, rendered with maud (checked at compile time; every value escaped unless marked otherwise,
//! and nothing here marks one). A page is its layout around a body; each live part of a body is an element that asks
//! the server for itself again (`hx-get`) when the page's stream says something changed, so the same function renders
//! it for the page and for the refresh.

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use crate::assets;
use crate::health::Health;

/// htmx without `eval` (the Content-Security-Policy forbids it), without its injected indicator style (the policy
/// allows no inline style either), and swapping error answers too, so that an action's refusal is shown — but not a
/// 401, which is an error the page's script answers by going to the sign-in.
const HTMX_CONFIG: &str = r#"{"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false,"responseHandling":[{"code":"204","swap":false},{"code":"401","swap":false,"error":true},{"code":"[2345]..","swap":true}]}"#;

/// Who is looking, and whether buttons that change things are shown.
pub struct Viewer<'a> {
    pub user: &'a str,
    /// `deployer`, or `deployer in team-a`.
    pub scope: &'a str,
    /// Whether the role changes objects (restart, rollback): a viewer's page has no such button.
    pub writes: bool,
}

fn layout(title: &str, viewer: Option<&Viewer>, stream: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) " · Capstan" }
                link rel="stylesheet" href=(assets::STYLE);
                script src=(assets::HTMX) defer {}
                script src=(assets::HTMX_SSE) defer {}
                script src=(assets::SCRIPT) defer {}
            }
            body hx-ext=[stream.map(|_| "sse")] sse-connect=[stream] {
                header.top {
                    a.brand href="/ui" { "Capstan" }
                    nav aria-label="Sections" {
                        a href="/ui" { "Overview" }
                        a href="/ui?kind=App" { "Apps" }
                        a href="/ui?kind=Sync" { "Syncs" }
                        a href="/ui?kind=Certificate" { "Certificates" }
                    }
                    @if stream.is_some() {
                        span #live .live role="status" aria-live="polite" { "connecting…" }
                    }
                    @if let Some(v) = viewer {
                        span.who { (v.user) " (" (v.scope) ")" }
                        form method="post" action="/ui/logout" { button type="submit" { "Sign out" } }
                    }
                    button #theme type="button" aria-label="Switch between light and dark" { "Theme" }
                }
                main #main { (body) }
                dialog #help aria-labelledby="help-title" {
                    h2 #help-title { "Keyboard shortcuts" }
                    table {
                        tbody {
                            tr { td { kbd { "/" } } td { "search" } }
                            tr { td { kbd { "g" } " " kbd { "o" } } td { "overview" } }
                            tr { td { kbd { "g" } " " kbd { "a" } } td { "Apps" } }
                            tr { td { kbd { "g" } " " kbd { "s" } } td { "Syncs" } }
                            tr { td { kbd { "g" } " " kbd { "c" } } td { "Certificates" } }
                            tr { td { kbd { "t" } } td { "light or dark" } }
                            tr { td { kbd { "?" } } td { "this list" } }
                        }
                    }
                    button #help-close type="button" { "Close" }
                }
            }
        }
    }
}

/// The sign-in page: a token (from `capstan auth token create`, or the data directory's) exchanged for a session.
pub fn login(error: Option<&str>, next: &str) -> Markup {
    layout(
        "Sign in",
        None,
        None,
        html! {
            section.login aria-labelledby="login-title" {
                h1 #login-title { "Sign in to Capstan" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/ui/login" {
                    label for="token" { "Token" }
                    input #token name="token" type="password" autocomplete="off" required;
                    input type="hidden" name="next" value=(next);
                    button type="submit" { "Sign in" }
                }
                p.muted {
                    "A named token (" code { "capstan auth token create NAME --role viewer" } ") or the data directory's "
                    "token. The page shows what its role may see."
                }
            }
        },
    )
}

/// One object in the overview.
pub struct Row {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub health: Health,
    pub message: String,
    pub age: String,
    /// Its own page, for the kinds that have one.
    pub link: Option<String>,
}

/// One event, as the pages list them.
pub struct EventLine {
    pub age: String,
    pub type_: String,
    pub object: String,
    pub reason: String,
    pub message: String,
}

/// One open incident.
pub struct IncidentLine {
    pub id: String,
    pub summary: String,
    pub state: String,
    pub age: String,
}

/// What the overview is filtered by, as its query string says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub q: String,
    pub kind: String,
    pub namespace: String,
    pub health: String,
    pub page: usize,
}

impl Filter {
    /// The query string that gives this filter (without `?`), `page` replaced.
    pub fn query(&self, page: usize) -> String {
        let mut parts = Vec::new();
        for (k, v) in [("q", &self.q), ("kind", &self.kind), ("namespace", &self.namespace), ("health", &self.health)] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", encode(v)));
            }
        }
        if page > 0 {
            parts.push(format!("page={page}"));
        }
        parts.join("&")
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Everything the overview shows.
pub struct Overview {
    pub filter: Filter,
    /// This page's rows.
    pub rows: Vec<Row>,
    /// Rows matching the filter, all pages.
    pub matching: usize,
    pub page_size: usize,
    /// Objects by health, before the health filter.
    pub counts: Vec<(Health, usize)>,
    pub kinds: Vec<&'static str>,
    pub namespaces: Vec<String>,
    pub events: Vec<EventLine>,
    pub incidents: Vec<IncidentLine>,
}

pub fn overview_page(viewer: &Viewer, o: &Overview) -> Markup {
    let f = &o.filter;
    layout(
        "Overview",
        Some(viewer),
        Some("/ui/stream"),
        html! {
            h1 { "Overview" }
            form.filters method="get" action="/ui" role="search" {
                label { "Search" input #search name="q" type="search" value=(f.q) placeholder="name, namespace, message"; }
                label {
                    "Kind"
                    select name="kind" {
                        option value="" { "every kind" }
                        @for k in &o.kinds { option value=(k) selected[f.kind == *k] { (k) } }
                    }
                }
                label {
                    "Namespace"
                    select name="namespace" {
                        option value="" { "every namespace" }
                        @for n in &o.namespaces { option value=(n) selected[f.namespace == *n] { (n) } }
                    }
                }
                label {
                    "Health"
                    select name="health" {
                        option value="" { "any" }
                        @for h in Health::ALL { option value=(h.as_str()) selected[f.health == h.as_str()] { (h.as_str()) } }
                    }
                }
                button type="submit" { "Filter" }
            }
            (overview_body(o))
        },
    )
}

/// The live part of the overview: incidents, counts, the objects and recent events.
pub fn overview_body(o: &Overview) -> Markup {
    let f = &o.filter;
    let query = f.query(f.page);
    let refresh = refresh_url(&query);
    let shown_to = f.page.saturating_mul(o.page_size).saturating_add(o.rows.len());
    html! {
        div #overview hx-get=(refresh) hx-trigger="sse:change" hx-swap="outerHTML" {
            @if !o.incidents.is_empty() {
                section.incidents aria-labelledby="incidents-title" {
                    h2 #incidents-title { "Open incidents" }
                    table {
                        thead { tr { th { "Incident" } th { "State" } th { "Summary" } th { "Since" } } }
                        tbody {
                            @for i in &o.incidents {
                                tr { td { (i.id) } td { (i.state) } td.message { (i.summary) } td { (i.age) } }
                            }
                        }
                    }
                }
            }
            nav.counts aria-label="Objects by health" {
                @for (h, n) in &o.counts {
                    @let by = Filter {
                        health: if f.health == h.as_str() { String::new() } else { h.as_str().to_string() },
                        page: 0,
                        ..f.clone()
                    };
                    a href={ "/ui?" (by.query(0)) } class=[(f.health == h.as_str()).then_some("active")] {
                        span class=(h.class()) { (h.as_str()) } " " (n)
                    }
                }
            }
            table #objects {
                caption.muted { (o.matching) " objects" @if o.matching > o.rows.len() { ", " (f.page * o.page_size + 1) "–" (shown_to) " shown" } }
                thead {
                    tr { th { "Kind" } th { "Namespace" } th { "Name" } th { "Health" } th { "Message" } th.optional { "Age" } }
                }
                tbody {
                    @for r in &o.rows {
                        tr {
                            td { (r.kind) }
                            td { (r.namespace) }
                            td { @match &r.link { Some(l) => a href=(l) { (r.name) }, None => (r.name) } }
                            td class=(r.health.class()) { (r.health.as_str()) }
                            td.message { (r.message) }
                            td.optional { (r.age) }
                        }
                    }
                }
            }
            @if o.matching > shown_to {
                p.more { a href={ "/ui?" (f.query(f.page.saturating_add(1))) } { "Next page" } }
            }
            @if f.page > 0 {
                p.more { a href={ "/ui?" (f.query(f.page - 1)) } { "Previous page" } }
            }
            h2 { "Recent events" }
            (events_table(&o.events))
        }
    }
}

fn refresh_url(query: &str) -> String {
    if query.is_empty() {
        "/ui/fragments/overview".to_string()
    } else {
        format!("/ui/fragments/overview?{query}")
    }
}

/// The overview's live part when it could not be read: what the server said, and it keeps asking for itself.
pub fn overview_failure(f: &Filter, message: &str) -> Markup {
    html! {
        div #overview hx-get=(refresh_url(&f.query(f.page))) hx-trigger="sse:change" hx-swap="outerHTML" {
            p.error role="alert" { "The overview could not be read: " (message) }
        }
    }
}

/// A page that says what failed.
pub fn failure(viewer: &Viewer, message: &str) -> Markup {
    layout(
        "Error",
        Some(viewer),
        None,
        html! { h1 { "Something failed" } p.error role="alert" { (message) } p { a href="/ui" { "Overview" } } },
    )
}

fn events_table(events: &[EventLine]) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No events." }
        } @else {
            table.events {
                thead { tr { th { "Age" } th { "Type" } th { "Object" } th { "Reason" } th { "Message" } } }
                tbody {
                    @for e in events {
                        tr { td { (e.age) } td { (e.type_) } td { (e.object) } td { (e.reason) } td.message { (e.message) } }
                    }
                }
            }
        }
    }
}

/// One earlier revision of an App, for its history.
pub struct Revision {
    pub revision: String,
    pub created: String,
    /// The one replicas run now.
    pub current: bool,
}

/// What an App's page shows.
pub struct AppView {
    pub namespace: String,
    pub name: String,
    /// The App as stored (status included).
    pub app: Value,
    pub revisions: Vec<Revision>,
    pub events: Vec<EventLine>,
    pub age: String,
}

impl AppView {
    fn base(&self) -> String {
        format!("/ui/apps/{}/{}", encode(&self.namespace), encode(&self.name))
    }
}

pub fn app_page(viewer: &Viewer, a: &AppView) -> Markup {
    let base = a.base();
    layout(
        &format!("App {}", a.name),
        Some(viewer),
        Some(&format!("/ui/stream?object=App/{}/{}", encode(&a.namespace), encode(&a.name))),
        html! {
            h1 { "App " (a.name) }
            @if viewer.writes {
                div.actions {
                    form method="post" action={ (base) "/restart" } hx-post={ (base) "/restart" } hx-target="#action-result" hx-swap="innerHTML" {
                        button type="submit" { "Restart" }
                    }
                }
            }
            div #action-result role="status" aria-live="polite" {}
            (app_body(viewer, a))
        },
    )
}

/// A value of the App's JSON as text (`—` when absent).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The live part of an App's page.
pub fn app_body(viewer: &Viewer, a: &AppView) -> Markup {
    let base = a.base();
    let s = &a.app["status"];
    let (health, why) = crate::health::health_of(&a.app);
    let empty = Vec::new();
    let conditions = s["conditions"].as_array().unwrap_or(&empty);
    let replicas = s["replicaStatuses"].as_array().unwrap_or(&empty);
    let md = &a.app["metadata"];
    html! {
        div #app hx-get={ "/ui/fragments/apps/" (encode(&a.namespace)) "/" (encode(&a.name)) } hx-trigger="sse:change" hx-swap="outerHTML" {
            dl.fields {
                dt { "Health" } dd { span class=(health.class()) { (health.as_str()) } " " span.muted { (why) } }
                dt { "Namespace" } dd { (a.namespace) }
                dt { "Replicas" } dd { (text(&s["readyReplicas"])) " ready of " (text(&a.app["spec"]["replicas"])) }
                dt { "Revision" } dd { (text(&s["revision"])) }
                dt { "Restarts" } dd { (text(&s["restarts"])) }
                @if let Some(eps) = s["endpoints"].as_array().filter(|e| !e.is_empty()) {
                    dt { "Entry points" } dd { @for e in eps { (text(e)) " " } }
                }
                dt { "Created" } dd { (a.age) " ago" }
                @if let Some(labels) = md["labels"].as_object().filter(|l| !l.is_empty()) {
                    dt { "Labels" } dd { @for (k, v) in labels { code { (k) "=" (text(v)) } " " } }
                }
                @if let Some(ann) = md["annotations"].as_object().filter(|l| !l.is_empty()) {
                    dt { "Annotations" } dd { @for (k, v) in ann { div { code { (k) } ": " (text(v)) } } }
                }
            }
            h2 { "Replicas" }
            table #replicas {
                thead { tr { th { "Replica" } th { "Phase" } th { "Ready" } th.optional { "PID" } th.optional { "Ports" } th { "Restarts" } th.optional { "Revision" } th { "Message" } } }
                tbody {
                    @for r in replicas {
                        tr {
                            td { (text(&r["name"])) }
                            td { (text(&r["phase"])) }
                            td { @if r["ready"] == true { "yes" } @else { "no" } }
                            td.optional { (text(&r["pid"])) }
                            td.optional { @if let Some(ports) = r["ports"].as_object() { @for (k, v) in ports { (k) ":" (text(v)) " " } } }
                            td { (text(&r["restarts"])) }
                            td.optional { (text(&r["revision"])) }
                            td.message { (r["message"].as_str().or(r["reason"].as_str()).unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Conditions" }
            table {
                thead { tr { th { "Type" } th { "Status" } th { "Reason" } th { "Message" } } }
                tbody {
                    @for c in conditions {
                        tr { td { (text(&c["type"])) } td { (text(&c["status"])) } td { (text(&c["reason"])) } td.message { (text(&c["message"])) } }
                    }
                }
            }
            h2 { "History" }
            table #history {
                thead { tr { th { "Revision" } th { "Made" } th { "" } } }
                tbody {
                    @for r in a.revisions.iter().rev() {
                        tr {
                            td { (r.revision) @if r.current { " " span.muted { "(running)" } } }
                            td { (r.created) }
                            td {
                                @if viewer.writes && !r.current {
                                    form method="post" action={ (base) "/rollback" } hx-post={ (base) "/rollback" } hx-target="#action-result" hx-swap="innerHTML" {
                                        input type="hidden" name="revision" value=(r.revision);
                                        button type="submit" aria-label={ "Roll back to " (r.revision) } { "Roll back" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Events" }
            (events_table(&a.events))
        }
    }
}

/// What an action answered: its message, or the server's refusal.
pub fn action_result(ok: bool, message: &str) -> Markup {
    html! {
        @if ok { p.muted { (message) } } @else { p.error role="alert" { (message) } }
    }
}

/// A page for a path that names nothing, or an object that is not there.
pub fn not_found(viewer: &Viewer, what: &str) -> Markup {
    layout("Not found", Some(viewer), None, html! { h1 { "Not found" } p { (what) } p { a href="/ui" { "Overview" } } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MARKUP: &str = "<img src=x onerror=alert(1)>";

    fn viewer(writes: bool) -> Viewer<'static> {
        Viewer { user: "ops", scope: "deployer", writes }
    }

    fn app_view() -> AppView {
        AppView {
            namespace: "shop".into(),
            name: "web".into(),
            app: json!({"kind": "App", "metadata": {"name": "web", "annotations": {"note": MARKUP}, "labels": {"team": MARKUP}},
                        "spec": {"replicas": 2},
                        "status": {"readyReplicas": 1, "revision": "abc",
                                   "conditions": [{"type": "Ready", "status": "False", "message": MARKUP}],
                                   "replicaStatuses": [{"name": "web-0", "phase": "Running", "ready": true, "pid": 42,
                                                        "ports": {"http": 8080}, "restarts": 0, "revision": "abc"}]}}),
            revisions: vec![
                Revision { revision: "old".into(), created: "1h".into(), current: false },
                Revision { revision: "abc".into(), created: "1m".into(), current: true },
            ],
            events: vec![EventLine {
                age: "1s".into(),
                type_: "Warning".into(),
                object: "App/shop/web".into(),
                reason: "Crash".into(),
                message: MARKUP.into(),
            }],
            age: "1h".into(),
        }
    }

    #[test]
    fn markup_in_any_field_is_shown_as_text() {
        let page = app_page(&viewer(true), &app_view()).into_string();
        assert!(!page.contains(MARKUP), "never raw");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "escaped");
        let mut o = overview(vec![]);
        o.rows[0].name = MARKUP.into();
        o.events = app_view().events;
        let page = overview_page(&viewer(false), &o).into_string();
        assert!(!page.contains(MARKUP));
        let page = login(Some(MARKUP), MARKUP).into_string();
        assert!(!page.contains(MARKUP));
    }

    #[test]
    fn a_role_that_does_not_write_gets_no_button_that_would() {
        let writer = app_page(&viewer(true), &app_view()).into_string();
        assert!(writer.contains("/ui/apps/shop/web/restart") && writer.contains("Roll back to old"));
        assert!(!writer.contains("Roll back to abc"), "the running revision has no rollback");
        let reader = app_page(&viewer(false), &app_view()).into_string();
        assert!(!reader.contains("/restart") && !reader.contains("/rollback"), "{reader}");
    }

    fn overview(extra: Vec<Row>) -> Overview {
        let mut rows = vec![Row {
            kind: "App".into(),
            namespace: "shop".into(),
            name: "web".into(),
            health: Health::Ready,
            message: "2/2".into(),
            age: "1m".into(),
            link: Some("/ui/apps/shop/web".into()),
        }];
        rows.extend(extra);
        Overview {
            filter: Filter { kind: "App".into(), q: "a b&c".into(), ..Default::default() },
            matching: 250,
            page_size: 200,
            rows,
            counts: vec![(Health::Ready, 1)],
            kinds: vec!["App", "Sync"],
            namespaces: vec!["shop".into()],
            events: vec![],
            incidents: vec![IncidentLine {
                id: "inc-1".into(),
                summary: "down".into(),
                state: "open".into(),
                age: "1m".into(),
            }],
        }
    }

    #[test]
    fn the_overview_keeps_its_filter_in_its_links_and_refresh() {
        let page = overview_page(&viewer(false), &overview(vec![])).into_string();
        assert!(page.contains(r#"hx-get="/ui/fragments/overview?q=a%20b%26c&amp;kind=App""#), "{page}");
        assert!(page.contains("Next page") && page.contains("page=1"), "250 match, 200 a page");
        assert!(page.contains("inc-1"), "incidents on top");
        assert!(page.contains(r#"sse-connect="/ui/stream""#));
        assert!(page.contains(r#"selected>App</option>"#) || page.contains(r#"value="App" selected"#), "{page}");
        // No inline script or style: the Content-Security-Policy allows none.
        assert!(!page.contains("<script>") && !page.contains("style=") && !page.contains("onclick"));
    }
}
