//! Capstan's controllers: pure plan functions from (desired, observed) to actions, and the loop that runs them.

pub mod controller;
pub mod plan;
pub mod queue;
pub mod runtime;

pub use controller::{
    revision_history, Controller, ControllerHandle, ObserverReport, ReconcileObserver, RevisionRecord,
};
pub use plan::{plan_app, Action, Plan, StopReason};
pub use runtime::{AppRuntime, ObservedReplica, ReplicaState};
