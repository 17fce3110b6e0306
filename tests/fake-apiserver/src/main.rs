//! The fake API server as a program, for benchmarks that run a client in another process.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let server = capstan_fake_apiserver::FakeApiServer::start_on(&addr, None).await?;
    println!("{}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
