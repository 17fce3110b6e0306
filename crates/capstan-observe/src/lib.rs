//! Capstan's observability: metrics expositions (parsing and lint), the scraper, the embedded time-series store
//! and PromQL evaluation over it.

pub mod alerting;
pub mod chunk;
pub mod escalation;
pub mod exposition;
pub mod promql;
pub mod query_limits;
pub mod scrape;
pub mod tsdb;
