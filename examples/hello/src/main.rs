//! The `capstan-hello` binary.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    hello::serve().await
}
