//! Gateway API on the embedded runtime: Gateways, HTTPRoutes (`compile`, pure) and TLSRoutes and TCPRoutes
//! (`streams`) compiled into the balancer's shared listeners, kept in step with the store by one controller
//! (`controller`), which writes their status; certificates are checked (`certs`) before they are served, and
//! client certificates asked per port (`frontend`); BackendTLSPolicies decide TLS to backends (`backend_tls`).

mod backend_tls;
pub mod certs;
pub mod compile;
pub mod controller;
mod frontend;
mod streams;
