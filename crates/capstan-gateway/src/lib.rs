//! Gateway API on the embedded runtime: Gateways, HTTPRoutes (`compile`, pure) and TLSRoutes and TCPRoutes
//! (`streams`) compiled into the balancer's shared listeners, kept in step with the store by one controller
//! (`controller`), which writes their status; certificates are checked (`certs`) before they are served, and
//! client certificates asked per port (`frontend`); BackendTLSPolicies decide TLS to backends (`backend_tls`);
//! only the Secrets they all name are read (`secret_refs`).

mod backend_tls;
pub mod certs;
pub mod compile;
pub mod controller;
mod frontend;
mod secret_refs;
mod streams;
