//! The `capstan` binary.

fn main() -> std::process::ExitCode {
    capstan_cli::main()
}
