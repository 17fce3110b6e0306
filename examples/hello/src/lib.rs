//! A tiny HTTP app for Capstan's examples: `/` answers with the replica's name, `/status` with `ok`, `/bytes/N`
//! with N bytes.

use axum::routing::get;
use axum::Router;

/// The app's routes, given the replica name to answer with.
pub fn router(replica: String) -> Router {
    Router::new()
        .route("/", get(move || async move { format!("hello from {replica}\n") }))
        .route("/status", get(|| async { "ok\n" }))
        .route("/bytes/{n}", get(bytes))
}

/// `n` bytes of `x` (at most 1 MiB), for load tests.
async fn bytes(axum::extract::Path(n): axum::extract::Path<usize>) -> String {
    "x".repeat(n.min(1 << 20))
}

/// Serves on 127.0.0.1:$PORT until SIGTERM or Ctrl-C, then finishes in-flight requests and exits 0.
pub async fn serve() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let replica = std::env::var("CAPSTAN_REPLICA").unwrap_or_else(|_| "hello".into());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("{replica} listening on http://127.0.0.1:{port}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, router(replica.clone()))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    println!("{replica} stopped");
    Ok(())
}
