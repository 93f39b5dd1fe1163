//! Data access: connections and pools, every SQL statement, the type rule the statements
//! apply, the local schema, `sync_logs`, the advisory locks and the tenant lookup.

pub mod convert;
pub mod pg;
pub mod runlock;
pub mod schema;
pub mod sql;
pub mod synclog;
pub mod tenant;
