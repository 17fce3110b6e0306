//! Capstan's web dashboard: the pages, rendered on the server from objects as JSON (`pages`), an object's health as the
//! overview shows it (`health`), and the assets served beside them (`assets`). The server's side — sessions, routes,
//! the live stream — is `capstan_api::ui`; nothing here does I/O.

pub mod assets;
pub mod health;
pub mod pages;

pub use health::{health_of, Health};
