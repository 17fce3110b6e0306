//! HTML escaping and the page frame: header with the node and version, live-update panel, footer.

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn url_enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2733;background:#f4f6f9}
header{background:#0b3d6b;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700;font-size:1.15em}
header .sp{flex:1}.badge{background:#ffffff22;border-radius:1em;padding:.1em .7em;font-size:.85em}
.badge.v{background:#f2b705;color:#222}main{max-width:60em;margin:1.2em auto;padding:0 1em}
section{background:#fff;border-radius:6px;padding:1em 1.2em;margin-bottom:1em;box-shadow:0 1px 2px #0002}
table{border-collapse:collapse;width:100%}td,th{padding:.35em .5em;border-bottom:1px solid #e3e7ed;text-align:left}
th{font-weight:600;color:#56606b}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
input,textarea,select,button{font:inherit;padding:.3em .5em}textarea{width:100%;min-height:4em}
button{background:#0b5fa5;color:#fff;border:0;border-radius:4px;padding:.35em .9em;cursor:pointer}
.muted{color:#6b7580}.err{background:#fde8e8;color:#8a1c1c;padding:.6em 1em;border-radius:4px}
#live{position:fixed;right:1em;bottom:1em;width:20em;font-size:.85em}
#live div{background:#0b3d6bee;color:#fff;padding:.4em .7em;border-radius:4px;margin-top:.3em}
footer{text-align:center;color:#6b7580;font-size:.85em;margin:2em 0}";

const SCRIPT: &str = "
(function(){var box=document.getElementById('live');var wait=500;
function show(t){var d=document.createElement('div');d.textContent=t;box.appendChild(d);
 setTimeout(function(){d.remove()},8000);while(box.children.length>5)box.firstChild.remove();}
function connect(){var ws=new WebSocket((location.protocol==='https:'?'wss://':'ws://')+location.host+'/ws');
 ws.onopen=function(){wait=500};
 ws.onmessage=function(m){var e=JSON.parse(m.data);if(e.type==='hello'){document.body.dataset.liveNode=e.node;return}
  var what={'issue.created':'new issue #'+e.id+': '+e.title,'comment.created':'comment on #'+e.id,
   'attachment.created':'file on #'+e.id+': '+e.filename,'worklog.created':'time logged on #'+e.id,
   'issue.updated':'#'+e.id+' is now '+e.status}[e.type]||e.type;
  show(what+(e.author?' by '+e.author:'')+' (via '+e.node+')');};
 ws.onclose=function(){setTimeout(connect,wait);wait=Math.min(wait*2,8000)};}
if(document.body.dataset.signedIn)connect();})();";

/// A whole page around `body`.
pub fn page(title: &str, user: Option<&str>, node: &str, version: &str, body: &str) -> String {
    let who = match user {
        Some(u) => format!(
            "<span class=badge>{}</span><form method=post action=/logout style=margin:0><button>Sign out</button></form>",
            esc(u)
        ),
        None => "<a href=/login>Sign in</a>".into(),
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
<title>{t} · Teamboard</title><style>{STYLE}</style></head>\
<body data-node=\"{n}\" data-version=\"{v}\"{signed}>\
<header><a class=brand href=/>Teamboard</a><a href=/>Issues</a><a href=/search>Search</a><a href=/reports>Reports</a>\
<a href=/accounts>Accounts</a><span class=sp></span><span class=\"badge v\" id=version>{v}</span>\
<span class=badge id=node title=\"the node that answered\">{n}</span>{who}</header>\
<main>{body}</main><div id=live aria-live=polite></div>\
<footer>served by <b>{n}</b> · Teamboard {v}</footer><script>{SCRIPT}</script></body></html>",
        t = esc(title),
        n = esc(node),
        v = esc(version),
        signed = if user.is_some() { " data-signed-in=1" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(url_enc("a b&c/é"), "a%20b%26c%2F%C3%A9");
        let p = page("<x>", Some("<u>"), "teamboard-1", "v2", "<p>hi</p>");
        assert!(
            p.contains("<title>&lt;x&gt; · Teamboard</title>") && p.contains("&lt;u&gt;") && p.contains("<p>hi</p>")
        );
        assert!(p.contains("served by <b>teamboard-1</b> · Teamboard v2"));
    }
}
