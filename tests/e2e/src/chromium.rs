//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: navigate, evaluate, wait — enough
//! to check web pages the way a user's browser runs them, scripts and websockets included.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page, killed when dropped.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

fn find_chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Some(p) =
            std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(name)).find(|p| p.is_file())
        {
            return p;
        }
    }
    panic!("chromium is not installed; scripts/test.sh installs Debian's `chromium`")
}

impl Chromium {
    /// Starts Chromium headless with a fresh profile and connects to its first page.
    pub async fn launch() -> Chromium {
        Chromium::launch_with(&[]).await
    }

    /// As [`Chromium::launch`], with `extra` command-line switches (host resolver rules, certificate handling).
    pub async fn launch_with(extra: &[&str]) -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(find_chromium())
            .args([
                "--headless=new",
                "--no-sandbox", // tests run as root, where Chromium's sandbox cannot start
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it chose to DevToolsActivePort.
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = crate::eventually("chromium's DevTools port", Duration::from_secs(30), || async {
            std::fs::read_to_string(&port_file).ok()?.lines().next()?.trim().parse().ok()
        })
        .await;
        let page_url = crate::eventually("chromium's page target", Duration::from_secs(30), || async {
            let (_, body) = crate::http_get(port, "/json/list").await?;
            let list: Value = serde_json::from_str(&body).ok()?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_string)
        })
        .await;
        let (page, _) = tokio_tungstenite::connect_async(page_url.as_str()).await.expect("devtools websocket");
        Chromium { child, _profile: profile, page, next_id: 0 }
    }

    /// Sends one DevTools command and returns its result, skipping events.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.page.send(Message::Text(msg.into())).await.expect("send to chromium");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = self.page.next().await {
                let Ok(Message::Text(t)) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["id"] == id {
                    return v;
                }
            }
            Value::Null
        })
        .await
        .expect("chromium answers");
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Loads `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates a JavaScript expression in the page and returns its value (Null on an exception).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await;
        if r.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy (not null, false, 0 or ""), returning its value.
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(expression).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v.as_str() != Some("") && v.as_f64() != Some(0.0);
            if truthy {
                return v;
            }
            let page =
                self.eval("document.documentElement ? document.documentElement.outerHTML.slice(0, 2000) : ''").await;
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; the page: {page}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
