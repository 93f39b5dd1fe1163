//! meter-sync: keeps a metering site's PostgreSQL in step with the central PostgreSQL.
//!
//! Readings move up (store-and-forward), configuration tables are mirrored down. See
//! `DESIGN.md`-derived architecture notes in the README; each module's header says what it owns.

pub mod app;
pub mod cli;
pub mod config;
pub mod convert;
pub mod cron;
pub mod cycle;
pub mod demo;
pub mod download;
pub mod error;
pub mod fixture;
pub mod http;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod pg;
pub mod pgcluster;
pub mod profile;
pub mod progress;
pub mod record;
pub mod runlock;
pub mod scheduler;
pub mod schema;
pub mod service;
pub mod sql;
pub mod status;
pub mod synclog;
pub mod tenant;
pub mod upload;
