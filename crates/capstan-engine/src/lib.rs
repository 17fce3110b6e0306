//! Capstan's controllers: pure plan functions from (desired, observed) to actions, and the loop that runs them.

pub mod autoscale;
pub mod controller;
pub mod diff;
pub mod errors;
pub mod owner;
pub mod plan;
pub mod queue;
pub mod runner;
pub mod runtime;
pub mod sync;
pub mod training;

pub use controller::{revision_history, Controller, ObserverReport, ReconcileObserver, RevisionRecord};
pub use diff::{diff_values, mask_secrets, owned_view, FieldChange};
pub use plan::{plan_app, Action, Plan, StopReason};
pub use runtime::{AppRuntime, ObservedReplica, ReplicaState, StartError};
pub use sync::{plan_sync, SyncPlan};
