//! Capstan's GitOps providers: Git fetches with gix, artifacts, manifest builds, webhooks, and the Source and Sync controllers.

pub mod artifact;
pub mod build;
pub mod controller;
pub mod git;
pub mod substitute;
pub mod webhook;
