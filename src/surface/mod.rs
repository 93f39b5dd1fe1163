//! The surfaces: thin adapters that parse input, call the service (or the data layer for
//! schema and quarantine commands) and format the result. No SQL, no sync rule.

pub mod app;
pub mod cli;
pub mod demo;
pub mod http;
pub mod mcp;
pub mod progress;
pub mod systemd;
