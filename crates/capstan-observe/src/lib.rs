//! Capstan's observability: metrics expositions in the Prometheus text and OpenMetrics formats, parsed and linted.

pub mod exposition;
