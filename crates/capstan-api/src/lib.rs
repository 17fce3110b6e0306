//! Capstan's HTTP API: the control plane assembly, the authenticated server, and the client the CLI uses.

pub mod access;
pub mod admission;
pub mod alerts;
pub mod audit;
pub mod client;
pub mod contexts;
pub mod discovery;
pub mod error;
pub mod keys;
pub mod listen;
pub mod monitor;
pub mod plane;
pub mod prometheus;
pub mod queries;
pub mod redact;
pub mod server;
pub mod tls;
pub mod tokens;
pub mod ui;
pub mod volume_sync;

pub use client::{Client, ClientError};
pub use error::ApiError;
pub use plane::{controller_of, ControlPlane, PlaneConfig, PlaneError};

/// What this build is: the version, the commit it was built from and that commit's date.
pub fn build_info() -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("CAPSTAN_COMMIT"),
        "commitDate": env!("CAPSTAN_COMMIT_DATE"),
    })
}

/// The address `capstan up` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7470";
/// The file in the data directory holding the API token.
pub const TOKEN_FILE: &str = "token";
/// The file in the data directory holding the URL of the running API.
pub const SERVER_FILE: &str = "server.json";
