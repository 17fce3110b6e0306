//! Capstan's resource model: the kinds users write, their validation and schemas. No I/O lives here.

pub mod acme;
pub mod alerting;
pub mod app;
pub mod backend_tls_policy;
pub mod certificate;
pub mod config_map;
pub mod database;
pub mod gateway;
pub mod gitops;
pub mod manifest;
pub mod meta;
pub mod quantity;
pub mod reference_grant;
pub mod resource;
pub mod serving;
pub mod stream_route;
pub mod training;
pub mod validate;
#[cfg(feature = "throwaway-kind")]
pub mod widget;
pub mod yaml;

pub use app::*;
pub use database::{Database, DatabaseRef};
pub use gitops::{Secret, Source, Sync};
pub use manifest::{check_duplicates, parse_manifests, Diagnostic, Diagnostics, Manifest};
pub use meta::*;
pub use quantity::parse_duration;
pub use resource::{
    app_revision, hash_value, revision_of, AlertRule, App, EscalationPolicy, Kind, ModelServer, Object, Resource,
    TrainingJob, DATABASE_CREDENTIALS_ANNOTATION, RESTARTED_AT_ANNOTATION,
};
pub use validate::FieldError;
