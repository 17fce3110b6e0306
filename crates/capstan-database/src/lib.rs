//! Capstan's Database kind on this machine: PostgreSQL from the machine's binaries, run as a supervised App.

pub mod backup;
pub mod controller;
pub mod error;
pub mod postgres;

pub use error::DatabaseError;
