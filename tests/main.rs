//! Integration tests against real PostgreSQL (throwaway clusters; see `support`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod api_tls;
mod architecture;
mod browser;
mod check;
mod cluster;
mod download;
mod download_props;
mod faults;
mod fixture;
mod hostile;
mod incremental;
mod integrity;
mod legacy;
mod local_faults;
mod mcp;
mod migrate;
mod operations;
mod pooler;
mod privilege;
mod prometheus;
mod runtime;
mod secrets;
mod service;
mod tls;
mod types;
mod upload;
mod upload_props;
mod websafety;
