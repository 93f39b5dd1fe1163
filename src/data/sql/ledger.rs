//! Statements of the upload ledger (`resend_check = "uncertain"`): the local record of each
//! batch whose remote commit may have happened while its readings are still queued, and of
//! since when every remote commit of a readings table was so recorded.
//!
//! Tables (service migration 2): `meter_sync_upload_ledger (id, readings_table, ids text[],
//! written_at)`, one row per batch between its remote commit and the local removal of its
//! readings; `meter_sync_upload_epoch (readings_table, database_identity, since)`, one row per
//! readings table whose queued readings are all either recorded or never sent.

use crate::profile::ReadingsSpec;

/// Whether both ledger tables exist (an older schema without them checks every batch).
pub const SELECT_LEDGER_EXISTS: &str = "select to_regclass('meter_sync_upload_ledger') is not null
    and to_regclass('meter_sync_upload_epoch') is not null";

/// The local id column's type as SQL names it (`bigint`, `uuid`, `character varying(36)`):
/// binds `$1` the quoted table, `$2` the column.
pub const SELECT_ID_TYPE: &str = "select format_type(a.atttypid, a.atttypmod)
from pg_attribute a where a.attrelid = to_regclass($1) and a.attname = $2 and not a.attisdropped";

/// What the site database is: its cluster (the system identifier, where this role may read
/// it), this database's oid, and the WAL timeline. A restore from a backup into another cluster
/// or database, a point-in-time recovery and a failover to a standby each change it: the queue
/// may then hold readings sent after the backup was taken, with their records lost.
pub const SELECT_DATABASE_IDENTITY: &str = concat!("select ", database_identity!());

/// The expression of [`SELECT_DATABASE_IDENTITY`], for the download's identity of the central
/// too.
macro_rules! database_identity {
    () => {
        "concat_ws('/',
    case when has_function_privilege('pg_control_system()', 'execute')
         then (select system_identifier::text from pg_control_system()) end,
    (select oid::text from pg_database where datname = current_database()),
    substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
    };
}
pub(crate) use database_identity;

/// The table's epoch: binds `$1` the readings table; returns the identity it was taken on.
pub const SELECT_EPOCH: &str =
    "select database_identity from meter_sync_upload_epoch where readings_table = $1";

/// Forgets the table's epoch (binds `$1`): its remote commits are no longer recorded (a unique
/// index dedupes them now, or every batch is checked), so its queue must be adopted again before
/// the ledger is trusted.
pub const DELETE_EPOCH: &str = "delete from meter_sync_upload_epoch where readings_table = $1";

/// Adopts the queue: every queued reading (quarantined ones too) goes into records of at most
/// `$2` ids, and the epoch starts on identity `$3`. Binds `$1` the readings table.
pub fn adopt_queue(readings: &ReadingsSpec) -> [String; 2] {
    [
        format!(
            "insert into meter_sync_upload_ledger (readings_table, ids)
select $1, array_agg(id) from (
    select {id}::text as id, (row_number() over () - 1) / $2::bigint as part
    from {table} where not is_synchronized
) queued group by part",
            id = readings.id_column.quoted(),
            table = readings.table.quoted(),
        ),
        "insert into meter_sync_upload_epoch (readings_table, database_identity) values ($1, $2)
on conflict (readings_table) do update set database_identity = excluded.database_identity, since = now()"
            .to_string(),
    ]
}

/// The table's records, oldest first (binds `$1`): id, ids.
pub const SELECT_RECORDS: &str = "select id, ids from meter_sync_upload_ledger
where readings_table = $1 order by id";

/// Records a batch before its remote commit, returning the record's id: binds `$1` the
/// readings table and `$2` the batch's ids (an array of `id_type`).
pub fn record(id_type: &str) -> String {
    format!(
        "insert into meter_sync_upload_ledger (readings_table, ids)
select $1, array_agg(x::text) from unnest($2::{id_type}[]) x returning id"
    )
}

/// Removes a record (`$1`) with its batch's readings, in the local transaction that removes
/// them after the remote commit.
pub const FORGET: &str = "delete from meter_sync_upload_ledger where id = $1";
