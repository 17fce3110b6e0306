//! A configurable HTTP app for end-to-end tests; behaviour is chosen with TESTAPP_* environment variables.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn file_flag(var: &str) -> bool {
    env(var).is_some_and(|p| Path::new(&p).exists())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let replica = env("CAPSTAN_REPLICA").unwrap_or_else(|| "testapp".into());
    if let Some(n) = env("TESTAPP_LOG_LINES").and_then(|n| n.parse::<usize>().ok()) {
        for i in 0..n {
            println!("{replica} line {i} {}", "x".repeat(60));
        }
    }
    if let Some(mb) = env("TESTAPP_ALLOC_MB").and_then(|n| n.parse::<usize>().ok()) {
        let mut v: Vec<u8> = Vec::new();
        match v.try_reserve_exact(mb << 20) {
            Ok(()) => {
                v.resize(mb << 20, 1);
                println!("allocated {mb} MiB");
            }
            Err(e) => {
                eprintln!("allocation of {mb} MiB failed: {e}");
                std::process::exit(3);
            }
        }
        std::mem::forget(v);
    }
    if env("TESTAPP_SPAWN_CHILD").is_some() {
        match std::process::Command::new("sleep").arg("300").spawn() {
            Ok(c) => println!("spawned child {}", c.id()),
            Err(e) => eprintln!("spawn failed: {e}"),
        }
    }
    if env("TESTAPP_SPAWN_SETSID").is_some() {
        // Children that leave the process group: one in its own session, one a daemon's double fork (the shell
        // exits at once, and its child is re-parented).
        let direct = std::process::Command::new("setsid").args(["sleep", "300"]).spawn();
        let daemon = std::process::Command::new("sh").args(["-c", "setsid sleep 300 &"]).status();
        match (direct, daemon) {
            (Ok(c), Ok(_)) => println!("spawned setsid child {}", c.id()),
            (Err(e), _) | (_, Err(e)) => eprintln!("spawn failed: {e}"),
        }
    }
    if env("TESTAPP_IGNORE_TERM").is_some() {
        // SAFETY: setting a signal disposition to SIG_IGN before any threads depend on it.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
        println!("ignoring SIGTERM");
    }
    if let Some(code) = env("TESTAPP_EXIT_CODE").and_then(|c| c.parse::<i32>().ok()) {
        let after = env("TESTAPP_EXIT_AFTER_MS").and_then(|c| c.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(after)).await;
        eprintln!("exiting with {code}");
        std::process::exit(code);
    }
    let port: u16 = env("PORT").and_then(|p| p.parse().ok()).unwrap_or(0);
    if env("TESTAPP_TCP_ECHO").is_some() {
        tcp_echo(port, replica).await;
        return;
    }
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind 127.0.0.1:{port}: {e}");
            std::process::exit(2);
        }
    };
    println!("{replica} listening on {port}");
    if let Some(mb) = env("TESTAPP_NO_NEWLINE_MB").and_then(|n| n.parse::<usize>().ok()) {
        // Output that never ends its line.
        use std::io::Write;
        let chunk = "y".repeat(1 << 20);
        let mut out = std::io::stdout().lock();
        for _ in 0..mb {
            let _ = out.write_all(chunk.as_bytes());
        }
        let _ = out.flush();
    }
    let name = replica.clone();
    let scrapes: &'static std::sync::atomic::AtomicU64 = Box::leak(Box::default());
    let app = Router::new()
        .route("/", get(move || async move { name }))
        .route(
            "/status",
            get(|| async {
                if file_flag("TESTAPP_READY_FILE") {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                } else {
                    (StatusCode::OK, "ok")
                }
            }),
        )
        .route(
            "/healthz",
            get(|| async {
                if file_flag("TESTAPP_LIVE_FILE") {
                    (StatusCode::INTERNAL_SERVER_ERROR, "sick")
                } else {
                    (StatusCode::OK, "ok")
                }
            }),
        )
        .route(
            "/say/{word}",
            get(|axum::extract::Path(word): axum::extract::Path<String>| async move {
                println!("said {word}");
                "ok"
            }),
        )
        .route("/env", get(|| async { Json(std::env::vars().collect::<BTreeMap<String, String>>()) }))
        .route(
            "/version",
            get(|| async {
                format!("{} {}", env("VERSION").unwrap_or_default(), env("CAPSTAN_REPLICA").unwrap_or_default())
            }),
        )
        .route(
            "/echo",
            axum::routing::post(|body: String| async move {
                println!("echoed {} bytes", body.len());
                body
            }),
        )
        // An answer that takes `ms` milliseconds (at most a minute) to start.
        .route(
            "/sleep/{ms}",
            get(|axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
                format!("slept {ms} ms")
            }),
        )
        // A large answer: `n` bytes (at most 256 MiB).
        .route(
            "/bytes/{n}",
            get(|axum::extract::Path(n): axum::extract::Path<usize>| async move { vec![b'b'; n.min(256 << 20)] }),
        )
        .route(
            "/metrics",
            get(move || async move {
                let replica = env("CAPSTAN_REPLICA").unwrap_or_default();
                let mut out = format!(
                    "# HELP testapp_info The replica this is.\n# TYPE testapp_info gauge\ntestapp_info{{served_by=\"{replica}\"}} 1\n"
                );
                // A badly instrumented app: a label value that changes at every scrape.
                if let Some(n) = env("TESTAPP_CHURN_SERIES").and_then(|n| n.parse::<u64>().ok()) {
                    let scrape = scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    out.push_str("# TYPE testapp_request gauge\n");
                    for i in 0..n {
                        out.push_str(&format!("testapp_request{{request_id=\"{}\"}} 1\n", scrape * n + i));
                    }
                }
                out
            }),
        )
        // Files in the directory an environment variable names (volumes): GET reads, PUT writes.
        .route(
            "/files/{var}/{name}",
            get(|axum::extract::Path((var, name)): axum::extract::Path<(String, String)>| async move {
                let dir = env(&var).unwrap_or_default();
                match std::fs::read_to_string(std::path::Path::new(&dir).join(name)) {
                    Ok(text) => (StatusCode::OK, text),
                    Err(e) => (StatusCode::NOT_FOUND, e.to_string()),
                }
            })
            .put(
                |axum::extract::Path((var, name)): axum::extract::Path<(String, String)>, body: String| async move {
                    let dir = env(&var).unwrap_or_default();
                    match std::fs::write(std::path::Path::new(&dir).join(name), body) {
                        Ok(()) => (StatusCode::OK, "written".to_string()),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                },
            ),
        )
        .route(
            "/headers",
            get(|h: axum::http::HeaderMap| async move {
                Json(
                    h.iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect::<BTreeMap<_, _>>(),
                )
            }),
        )
        .route("/ws", get(ws))
        // The HTTP version the request came in (HTTP/2.0 from a balancer speaking h2c).
        .route("/proto", get(|req: axum::extract::Request| async move { format!("{:?}", req.version()) }));
    if env("TESTAPP_H2C_ONLY").is_some() {
        return serve_h2c_only(listener, app).await;
    }
    if env("TESTAPP_HTTPS").is_some() {
        if let Some(acceptor) = tls_acceptor() {
            return serve_https(listener, app, acceptor).await;
        }
    }
    let ignore = env("TESTAPP_IGNORE_TERM").is_some();
    let delay: u64 = env("TESTAPP_TERM_DELAY_MS").and_then(|c| c.parse().ok()).unwrap_or(0);
    let shutdown = async move {
        if ignore {
            std::future::pending::<()>().await;
        }
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            return std::future::pending::<()>().await;
        };
        term.recv().await;
        println!("got SIGTERM; finishing in {delay} ms");
        tokio::time::sleep(Duration::from_millis(delay)).await;
    };
    let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    println!("{replica} exiting cleanly");
}

/// A websocket that answers every text message with `<VERSION> <replica> <message>`.
async fn ws(up: axum::extract::ws::WebSocketUpgrade) -> axum::response::Response {
    up.on_upgrade(|mut socket| async move {
        use axum::extract::ws::Message;
        while let Some(Ok(msg)) = socket.recv().await {
            if let Message::Text(t) = msg {
                let reply = format!(
                    "{} {} {}",
                    env("VERSION").unwrap_or_default(),
                    env("CAPSTAN_REPLICA").unwrap_or_default(),
                    t.as_str()
                );
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// Answers each line with `<replica> <line>`.
async fn echo_lines<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(stream: S, replica: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if w.write_all(format!("{replica} {line}\n").as_bytes()).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
}

/// The app over HTTPS (`TESTAPP_HTTPS` with a certificate): a backend that ends TLS itself, behind a
/// BackendTLSPolicy. Stops with the process.
async fn serve_https(listener: tokio::net::TcpListener, app: Router, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The app in HTTP/2 without TLS only, as a gRPC server (`TESTAPP_H2C_ONLY`): an HTTP/1.1 request is refused.
async fn serve_h2c_only(listener: tokio::net::TcpListener, app: Router) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .http2_only()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// The TLS server of a `TESTAPP_TLS_CERT` and `TESTAPP_TLS_KEY` (PEM text), if both are given.
fn tls_acceptor() -> Option<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (env("TESTAPP_TLS_CERT")?, env("TESTAPP_TLS_KEY")?);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>().expect("TESTAPP_TLS_CERT: PEM");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("TESTAPP_TLS_KEY: a PEM key");
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the key of the certificate");
    Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// A TCP server that answers each line with `<replica> <line>`, until SIGTERM; over TLS when given a certificate
/// (a backend that ends TLS itself, behind a passthrough listener).
async fn tcp_echo(port: u16, replica: String) {
    let tls = tls_acceptor();
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind: {e}");
            std::process::exit(2);
        }
    };
    println!("{replica} echoing on {port}");
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let replica = replica.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                echo_lines(stream, &replica).await;
                            }
                        }
                        None => echo_lines(stream, &replica).await,
                    }
                });
            }
        }
    }
}
