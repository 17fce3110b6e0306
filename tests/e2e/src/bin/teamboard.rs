//! `capstan-teamboard`: the Teamboard demo app built into the test package, so tests run it without a second build.

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teamboard: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(async { teamboard::serve(teamboard::Config::from_env()?).await });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("teamboard: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
