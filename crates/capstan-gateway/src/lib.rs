//! Gateway API on the embedded runtime: Gateways and HTTPRoutes compiled (`compile`, pure) into the balancer's
//! shared listeners, kept in step with the store by one controller (`controller`), which writes their status.

pub mod compile;
pub mod controller;
