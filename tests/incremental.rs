//! The incremental download: only rows written since the last run travel, site edits of
//! mirrored rows are repaired by the next ordinary run, and the mirror equals the central
//! after every run whatever either side wrote in between (property test).

use meter_sync::engine::download::{DownloadReport, Strategy as Compared};
use meter_sync::profile::Profile;
use proptest::prelude::*;
use tokio_postgres::Client;

use crate::support::{
    check_cases_with, count, default_env, default_env_with, download, quiet_default_env, rows_text,
    TestEnv,
};

const METER_COLUMNS: &str = "id, meter_element_id, device_id, name, type, serial_number, installation_date, location_id, ip, port, protocol, status, register_map, element, notes, active, created_at, updated_at";
const REGISTER_COLUMNS: &str = "id, name, register, unit, field_name";

/// The mirror equals the central: every remote meter of tenant 1 is a local row with the same
/// values, and every other local meter is one the central no longer has, deactivated
/// (`on_missing = "deactivate"`); registers (`delete`) are equal as sets.
async fn assert_mirrors(remote: &Client, local: &Client, when: &str) {
    assert_eq!(
        rows_text(
            local,
            &format!("select {METER_COLUMNS} from meter where meter_sync_version is not null order by id, meter_element_id")
        )
        .await,
        rows_text(
            remote,
            &format!("select {METER_COLUMNS} from meter where tenant_id = 1 order by id, meter_element_id")
        )
        .await,
        "meters {when}"
    );
    let remote_keys = rows_text(
        remote,
        "select id, meter_element_id from meter where tenant_id = 1",
    )
    .await;
    for extra in rows_text(
        local,
        "select id, meter_element_id from meter where meter_sync_version is null",
    )
    .await
    {
        assert!(
            !remote_keys.contains(&extra),
            "local meter {extra} is on the central but not mirrored {when}"
        );
    }
    assert_eq!(
        rows_text(
            local,
            "select id from meter where meter_sync_version is null and active"
        )
        .await,
        Vec::<String>::new(),
        "meters the central no longer has are deactivated {when}"
    );
    assert_eq!(
        rows_text(
            local,
            &format!("select {REGISTER_COLUMNS} from register order by id")
        )
        .await,
        rows_text(
            remote,
            &format!("select {REGISTER_COLUMNS} from register where tenant_id = 1 order by id")
        )
        .await,
        "registers {when}"
    );
}

async fn sync(env: &TestEnv, profile: &Profile) -> DownloadReport {
    let report = download(env, profile, Some("1"), &["tenant", "meter", "register"]).await;
    assert!(report.success(), "{report:#?}");
    report
}

#[tokio::test]
async fn site_edits_of_mirrored_rows_are_repaired_by_the_next_ordinary_run() {
    let (env, profile, _turn) = quiet_default_env("inc_site_edit", &[]).await;
    let (remote, local) = (env.remote.client().await, env.local.client().await);
    sync(&env, &profile).await;
    // The site's software edits, inserts and deletes mirrored rows, once inside a
    // subtransaction (its rows carry the subtransaction's id, not the top one's).
    local
        .batch_execute(
            "update meter set notes = 'edited at the site' where id = 2;
             begin; savepoint s; update meter set name = 'renamed in a savepoint' where id = 3; release s; commit;
             delete from meter where id = 4;
             insert into meter (id, meter_element_id, name, active) values (999, 1, 'site only', true);
             update register set unit = 'site unit' where id = 1;
             delete from register where id = 2;
             insert into register (id, name, register) values (999, 'site register', 1)",
        )
        .await
        .unwrap();
    let repaired = sync(&env, &profile).await;
    assert_mirrors(&remote, &local, "after the repairing run").await;
    let meter = repaired.entity("meter").unwrap();
    assert_eq!(meter.updated, 2, "{meter:#?}");
    assert_eq!(meter.inserted, 1, "the deleted meter is back: {meter:#?}");
    assert_eq!(
        meter.deleted, 1,
        "the site's own meter is deactivated: {meter:#?}"
    );
    assert_eq!(count(&local, "register").await, 10);
    // The run's own writes are not taken for site edits: the next run fetches nothing.
    let quiet = sync(&env, &profile).await;
    for entity in &quiet.entities {
        assert_eq!(
            (
                entity.strategy,
                entity.fetched,
                entity.updated,
                entity.inserted,
                entity.deleted
            ),
            (Compared::Incremental, 0, 0, 0, 0),
            "{entity:#?}"
        );
    }
    // A plain edit (no deletion) is repaired without comparing every row version.
    local
        .batch_execute("update meter set port = 1 where id = 6")
        .await
        .unwrap();
    let edit = sync(&env, &profile).await;
    let meter = edit.entity("meter").unwrap();
    assert_eq!(
        (meter.strategy, meter.fetched, meter.updated),
        (Compared::Incremental, 1, 1)
    );
    assert_mirrors(&remote, &local, "after a plain edit").await;
}

#[tokio::test]
async fn a_remote_write_in_progress_at_the_snapshot_arrives_with_the_next_run() {
    let (env, profile, _turn) = quiet_default_env("inc_in_flight", &[]).await;
    let (remote, local) = (env.remote.client().await, env.local.client().await);
    sync(&env, &profile).await;
    // Two writers hold their transactions open across a run: one plain, one whose write is in a
    // subtransaction; a committed write after them gets a later id than both.
    let plain = env.remote.client().await;
    plain
        .batch_execute("begin; update meter set notes = 'slow writer' where id = 2")
        .await
        .unwrap();
    let nested = env.remote.client().await;
    nested
        .batch_execute(
            "begin; select 1; savepoint s; update meter set notes = 'nested writer' where id = 3; release s",
        )
        .await
        .unwrap();
    remote
        .batch_execute("update meter set notes = 'quick writer' where id = 4")
        .await
        .unwrap();
    let during = sync(&env, &profile).await;
    assert_eq!(during.entity("meter").unwrap().updated, 1);
    plain.batch_execute("commit").await.unwrap();
    nested.batch_execute("commit").await.unwrap();
    let after = sync(&env, &profile).await;
    let meter = after.entity("meter").unwrap();
    assert_eq!((meter.strategy, meter.updated), (Compared::Incremental, 2));
    assert_mirrors(&remote, &local, "after the slow writers committed").await;
}

#[tokio::test]
async fn a_state_that_cannot_be_trusted_makes_the_run_compare_every_rows_content() {
    let (env, profile) = default_env("inc_untrusted").await;
    let (remote, local) = (env.remote.client().await, env.local.client().await);
    sync(&env, &profile).await;
    // An edit that keeps the row version, made while the service kept no state (as before an
    // upgrade): only comparing content can see it.
    local
        .batch_execute(
            "update meter set notes = 'edited before any state' where id = 2;
             delete from meter_sync_download_state",
        )
        .await
        .unwrap();
    let report = sync(&env, &profile).await;
    let meter = report.entity("meter").unwrap();
    assert_eq!((meter.strategy, meter.updated), (Compared::Diff, 1));
    assert_mirrors(&remote, &local, "after the content comparison").await;
    // State from another central (or a restored one): every row's content compared again.
    local
        .batch_execute(
            "update meter set notes = 'edited' where id = 3;
             update meter_sync_download_state set remote_identity = 'another central'",
        )
        .await
        .unwrap();
    let report = sync(&env, &profile).await;
    let meter = report.entity("meter").unwrap();
    assert_eq!((meter.strategy, meter.updated), (Compared::Diff, 1));
    // A central that went back in time: the same.
    local
        .batch_execute(
            "update meter set notes = 'edited' where id = 4;
             update meter_sync_download_state set remote_next = remote_next + 1000000",
        )
        .await
        .unwrap();
    let meter = sync(&env, &profile).await.entity("meter").unwrap().clone();
    assert_eq!((meter.strategy, meter.updated), (Compared::Diff, 1));
    assert_mirrors(&remote, &local, "after the central went back").await;
    assert_eq!(
        sync(&env, &profile).await.entity("meter").unwrap().strategy,
        Compared::Incremental
    );
}

// ---------------------------------------------------------------- the property

/// One write between runs, on either side, or a run.
#[derive(Debug, Clone)]
enum Op {
    RemoteUpdate(i64),
    RemoteInsert(i64),
    RemoteDelete(i64),
    /// An update whose transaction is still open during the next run, committed after it.
    RemoteSlowUpdate(i64),
    LocalUpdate(i64),
    LocalUpdateInSavepoint(i64),
    LocalInsert(i64),
    LocalDelete(i64),
    Run,
}

/// Ids 1-19 are meters and registers of either tenant (tenant 2's registers start at 11); a
/// slow writer takes one of meters 20-25, which nothing else writes (its row lock would block).
fn op() -> impl Strategy<Value = Op> {
    let id = 1i64..20;
    prop_oneof![
        id.clone().prop_map(Op::RemoteUpdate),
        (100i64..110).prop_map(Op::RemoteInsert),
        id.clone().prop_map(Op::RemoteDelete),
        (20i64..26).prop_map(Op::RemoteSlowUpdate),
        id.clone().prop_map(Op::LocalUpdate),
        id.clone().prop_map(Op::LocalUpdateInSavepoint),
        (200i64..210).prop_map(Op::LocalInsert),
        id.prop_map(Op::LocalDelete),
        Just(Op::Run),
        Just(Op::Run),
    ]
}

async fn apply(
    env: &TestEnv,
    remote: &Client,
    local: &Client,
    op: &Op,
    slow: &mut Vec<(i64, Client)>,
) {
    let sql = match op {
        Op::RemoteUpdate(id) => (true, format!("update meter set notes = md5(random()::text) where id = {id}; update register set unit = md5(random()::text) where id = {id}")),
        Op::RemoteInsert(id) => (true, format!(
            "insert into meter (id, meter_element_id, tenant_id, name, active) values ({id}, 1, 1, 'new {id}', true) on conflict do nothing;
             insert into register (id, tenant_id, name, register) values ({id}, 1, 'new {id}', 1) on conflict do nothing")),
        Op::RemoteDelete(id) => (true, format!("delete from device_register where register_id = {id}; delete from meter where id = {id}; delete from register where id = {id}")),
        Op::RemoteSlowUpdate(id) => {
            if slow.iter().any(|(held, _)| held == id) {
                return;
            }
            let writer = env.remote.client().await;
            writer
                .batch_execute(&format!("begin; update meter set name = 'slow ' || md5(random()::text) where id = {id}"))
                .await
                .unwrap();
            slow.push((*id, writer));
            return;
        }
        Op::LocalUpdate(id) => (false, format!("update meter set notes = 'site' where id = {id}; update register set unit = 'site' where id = {id}")),
        Op::LocalUpdateInSavepoint(id) => (false, format!("begin; savepoint s; update meter set port = 7 where id = {id}; release s; commit")),
        Op::LocalInsert(id) => (false, format!(
            "insert into meter (id, meter_element_id, name, active) values ({id}, 1, 'site {id}', true) on conflict do nothing;
             insert into register (id, name, register) values ({id}, 'site {id}', 1) on conflict do nothing")),
        Op::LocalDelete(id) => (false, format!("delete from device_register where register_id = {id}; delete from meter where id = {id}; delete from register where id = {id}")),
        Op::Run => return,
    };
    let client = if sql.0 { remote } else { local };
    client.batch_execute(&sql.1).await.unwrap();
}

#[test]
fn prop_the_mirror_equals_the_central_after_every_ordinary_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let case = std::sync::atomic::AtomicU32::new(0);
    check_cases_with(6, prop::collection::vec(op(), 4..24), |ops| {
        rt.block_on(async {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (env, profile) =
                default_env_with(&format!("inc_prop_{n}"), &[("ALLOW_MASS_DELETE", "true")]).await;
            let (remote, local) = (env.remote.client().await, env.local.client().await);
            sync(&env, &profile).await;
            let mut slow = Vec::new();
            for (i, op) in ops.iter().chain([&Op::Run]).enumerate() {
                apply(&env, &remote, &local, op, &mut slow).await;
                if let Op::Run = op {
                    sync(&env, &profile).await;
                    // Uncommitted writes are invisible to the comparison too.
                    assert_mirrors(&remote, &local, &format!("after op {i} of {ops:?}")).await;
                    // Writers open during the run commit now: the next run must bring them.
                    for (_, writer) in slow.drain(..) {
                        writer.batch_execute("commit").await.unwrap();
                    }
                }
            }
            sync(&env, &profile).await;
            assert_mirrors(
                &remote,
                &local,
                &format!("after the last commits of {ops:?}"),
            )
            .await;
        })
    });
}
