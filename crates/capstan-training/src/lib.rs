//! TrainingJobs on the embedded runtime: the controller that runs each TensorFlow task as an App.

pub mod controller;
