//! meter-sync: keeps a metering site's PostgreSQL in step with the central PostgreSQL.
//!
//! Readings move up (store-and-forward), configuration tables are mirrored down. See
//! `DESIGN.md`-derived architecture notes in the README; each module's header says what it owns.

pub mod config;
pub mod cron;
pub mod data;
pub mod engine;
pub mod error;
pub mod fixture;
pub mod logging;
pub mod pgbouncer;
pub mod pgcluster;
pub mod profile;
pub mod service;
pub mod surface;
