//! ModelServers on the embedded runtime: the controller that keeps an App running `capstan serve-model` on every
//! replica, and the pure agreement on which model versions the replicas serve.

pub mod agreement;
pub mod controller;
