//! cert-manager's Issuers and Certificates on the embedded runtime: keys made, certificates signed by themselves
//! or by a CA, written to Secrets as cert-manager writes them, and renewed before they expire.

pub mod controller;
pub mod error;
pub mod issue;
pub mod keys;
pub mod plan;
pub mod secret;
