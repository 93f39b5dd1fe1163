//! The upload ledger (`resend_check = "uncertain"`, the default where no unique index on the
//! remote guards the dedupe key): only a batch whose earlier send is uncertain is compared with
//! the remote's readings; every other goes straight into the remote table.
//!
//! Before a batch's remote commit, its ids are written to the ledger on a connection of the
//! run's own and committed durably; the record is removed in the local transaction that removes
//! the batch's readings, after the remote commit. So a queued reading under no record was
//! never committed on the remote, and one under a record may have been: a fault between the
//! two commits (a crash, a cut link, a lost local commit) leaves exactly such records. A run
//! settles them first, each through the stage and the anti-join, before any other claim.
//!
//! The rule holds from the table's epoch on: the first run with the ledger puts every queued
//! reading under records (an older process or an earlier path may have sent them), and a run
//! that does not record (a unique index dedupes, or `resend_check = "every_batch"`) ends the
//! epoch. So does a site database that is not the one the epoch began on (a restore from a
//! backup, a point-in-time recovery, a failover: see `SELECT_DATABASE_IDENTITY`).
//!
//! Within a run, a batch that fails after writing its record may leave its readings on the
//! remote and back in the queue, where another worker's next claim finds them: the failing
//! worker raises the run's `uncertain` flag before its connections close (which releases the
//! readings), and every batch looks at the flag after its claim and before its remote commit,
//! so from then on the run's batches go through the anti-join.

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::UploadError;
use crate::data::pg::{on_local, PgError, Pools, RawValue};
use crate::data::sql::ledger;
use crate::profile::ReadingsSpec;

/// The ledger of one run.
pub(super) struct Ledger {
    /// A connection of the ledger's own (out of the pool, closed with the run), committing
    /// synchronously: a record must be durable before the remote commit it covers.
    client: deadpool_postgres::ClientWrapper,
    /// The readings table's key in the ledger tables.
    table: String,
    record: Statement,
    /// The local id column's type, as SQL names it.
    pub(super) id_type: String,
}

/// A batch's entry in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// No ledger in this run.
    Unrecorded,
    /// To be recorded before the remote commit.
    New,
    /// The batch settles this record's readings (already recorded).
    Existing(i64),
}

/// Whether the ledger tables exist (an older local schema: `meter-sync migrate` adds them).
async fn tables_exist(client: &tokio_postgres::Client) -> Result<bool, PgError> {
    Ok(client
        .query_one(ledger::SELECT_LEDGER_EXISTS, &[])
        .await
        .map_err(on_local("look up the upload ledger"))?
        .get(0))
}

/// The local id column's type, as SQL names it.
async fn id_type(
    client: &tokio_postgres::Client,
    readings: &ReadingsSpec,
) -> Result<String, PgError> {
    Ok(client
        .query_one(
            ledger::SELECT_ID_TYPE,
            &[&readings.table.quoted(), &readings.id_column.as_str()],
        )
        .await
        .map_err(on_local("read the readings id's type"))?
        .get(0))
}

impl Ledger {
    /// The ledger for this run, or `None` when the run checks every batch (`recorded` false: a
    /// unique index dedupes, or `resend_check = "every_batch"`; the table's epoch then ends) or
    /// the ledger tables are missing. Adopts the queue when the table's epoch is missing or was
    /// taken on another database.
    pub(super) async fn open(
        pools: &Pools,
        guard: &tokio_postgres::Client,
        readings: &ReadingsSpec,
        recorded: bool,
        batch_size: u32,
    ) -> Result<Option<Self>, UploadError> {
        let table = readings.table.quoted();
        if !tables_exist(guard).await? {
            if recorded {
                tracing::warn!(table = %readings.table, "the upload ledger's tables are missing, so every batch is compared with the remote's readings; run meter-sync migrate");
            }
            return Ok(None);
        }
        if !recorded {
            guard
                .execute(ledger::DELETE_EPOCH, &[&table])
                .await
                .map_err(on_local("end the upload ledger's epoch"))?;
            return Ok(None);
        }
        let mut client = deadpool_postgres::Object::take(pools.local().await?);
        client
            .batch_execute("set synchronous_commit = on")
            .await
            .map_err(on_local("open the upload ledger"))?;
        let id_type = id_type(&client, readings).await?;
        let identity: String = client
            .query_one(ledger::SELECT_DATABASE_IDENTITY, &[])
            .await
            .map_err(on_local("identify the local database"))?
            .get(0);
        let epoch: Option<String> = client
            .query_opt(ledger::SELECT_EPOCH, &[&table])
            .await
            .map_err(on_local("read the upload ledger's epoch"))?
            .map(|row| row.get(0));
        if epoch.as_deref() != Some(identity.as_str()) {
            let tx = client
                .transaction()
                .await
                .map_err(on_local("begin adopting the queue"))?;
            let [records, start] = ledger::adopt_queue(readings);
            let adopted = tx
                .execute(&records, &[&table, &i64::from(batch_size.max(1))])
                .await
                .map_err(on_local("adopt the queue into the upload ledger"))?;
            tx.execute(&start, &[&table, &identity])
                .await
                .map_err(on_local("start the upload ledger's epoch"))?;
            tx.commit()
                .await
                .map_err(on_local("commit the adopted queue"))?;
            let why = match epoch {
                None => "the ledger starts",
                Some(_) => "the local database is not the one the ledger began on (restored, recovered or failed over)",
            };
            tracing::info!(table = %readings.table, records = adopted, reason = why, "every queued reading is compared with the remote's before it is inserted again");
        }
        let record = client
            .prepare(&ledger::record(&id_type))
            .await
            .map_err(on_local("prepare the upload ledger's record"))?;
        Ok(Some(Self {
            client,
            table,
            record,
            id_type,
        }))
    }

    /// Records a batch's ids before its remote commit; returns the record's id.
    pub(super) async fn record(&self, ids: &[RawValue]) -> Result<i64, PgError> {
        let params: [&(dyn ToSql + Sync); 2] = [&self.table, &ids];
        Ok(self
            .client
            .query_one(&self.record, &params)
            .await
            .map_err(on_local("record the batch in the upload ledger"))?
            .get(0))
    }

    /// The records left by earlier faults, oldest first: id and the readings' ids as text.
    pub(super) async fn records(&self) -> Result<Vec<(i64, Vec<String>)>, PgError> {
        Ok(self
            .client
            .query(ledger::SELECT_RECORDS, &[&self.table])
            .await
            .map_err(on_local("read the upload ledger"))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }
}

impl Entry {
    /// The record this batch settles, if any.
    pub(super) fn existing(self) -> Option<i64> {
        match self {
            Entry::Existing(id) => Some(id),
            _ => None,
        }
    }
}

/// `meter-sync check`: prepares the ledger's statements (and runs its reads) when the run
/// would record its batches, writing nothing.
pub(super) async fn dry_run(
    local: &tokio_postgres::Client,
    readings: &ReadingsSpec,
    outgoing: &crate::data::sql::Outgoing,
    recorded: bool,
) -> Result<(), UploadError> {
    if !recorded || !tables_exist(local).await? {
        return Ok(());
    }
    let id_type = id_type(local, readings).await?;
    local
        .query_one(ledger::SELECT_DATABASE_IDENTITY, &[])
        .await
        .map_err(on_local("identify the local database"))?;
    let mut statements: Vec<String> = ledger::adopt_queue(readings).into();
    statements.extend([
        ledger::SELECT_EPOCH.to_string(),
        ledger::DELETE_EPOCH.to_string(),
        ledger::SELECT_RECORDS.to_string(),
        ledger::FORGET.to_string(),
        ledger::record(&id_type),
        crate::data::sql::claim_batch_ids(readings, outgoing, &id_type),
        crate::data::sql::claim_and_remove_ids(readings, outgoing, &id_type),
    ]);
    for statement in &statements {
        local
            .prepare(statement)
            .await
            .map_err(on_local("prepare the upload ledger's statements"))?;
    }
    Ok(())
}
