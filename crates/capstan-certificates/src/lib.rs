//! cert-manager's Issuers and Certificates on the embedded runtime: keys made, certificates signed by themselves,
//! by a CA or by an ACME server, written to Secrets as cert-manager writes them, and renewed before they expire.

pub mod acme;
pub mod controller;
pub mod error;
mod index;
pub mod issue;
pub mod keys;
pub mod plan;
mod renewal_info;
pub mod secret;
pub mod shim;
