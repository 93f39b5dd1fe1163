//! The engines: functions of (pools, request) -> report that move data, importing nothing
//! above the data layer. Recording their reports is the service's job.

pub mod deadline;
pub mod download;
pub mod upload;

pub use deadline::{Deadline, TimedOut};
