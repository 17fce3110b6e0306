//! Capstan on Kubernetes: the same manifests rendered as Kubernetes objects built with k8s-openapi types.

pub mod cluster;
pub mod cnpg;
pub mod crd;
pub mod operator;
pub mod plan;
pub mod render;
pub mod roles;
pub mod serving;
pub mod training;
