//! TrainingJobs and ModelServers on the embedded runtime: the controllers that run TensorFlow tasks and model
//! servers as Apps.

pub mod agreement;
pub mod controller;
pub mod serving;
