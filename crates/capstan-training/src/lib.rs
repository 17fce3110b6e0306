//! TrainingJobs on the embedded runtime: the controller that runs TensorFlow tasks as Apps, each with its
//! `TF_CONFIG`.

pub mod controller;
