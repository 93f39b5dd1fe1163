//! The engines: functions of (pools, request) -> report that move data, importing nothing
//! above the data layer. Recording their reports is the service's job.

pub mod download;
pub mod upload;
