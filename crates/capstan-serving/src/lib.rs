//! The model server behind the `ModelServer` kind (`capstan serve-model`): ONNX models run with tract, served with
//! the TensorFlow Serving REST API, new versions loaded from numbered directories and swapped in while serving.

pub mod fixtures;
pub mod model;
pub mod rest;
pub mod versions;

pub use rest::{serve, ServeConfig};
pub use versions::{ModelVersions, VersionPolicy};
