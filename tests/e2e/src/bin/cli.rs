//! The `capstan` CLI built inside the test package, so tests can run the real binary by path.

fn main() -> std::process::ExitCode {
    capstan_cli::main()
}
