//! Gateway API on the embedded runtime: Gateways and HTTPRoutes compiled (`compile`, pure) into the balancer's
//! shared listeners, kept in step with the store by one controller (`controller`), which writes their status;
//! certificates are checked (`certs`) before they are served.

pub mod certs;
pub mod compile;
pub mod controller;
