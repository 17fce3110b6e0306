//! The `teamboard` binary: one node of the clustered demo app, configured from its environment.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tantivy=warn".into()),
        )
        .init();
    let result = match teamboard::Config::from_env() {
        Ok(cfg) => teamboard::serve(cfg).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("teamboard: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
