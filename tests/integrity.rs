//! Billing integrity against real clusters: a site never writes another tenant's readings, one
//! entity's failure is its own, and local foreign keys between mirrored tables hold in one run.

use meter_sync::profile::Profile;

use crate::support::{count, default_env, download, migrate_local, rows_text, TestEnv};

/// A readings profile whose tables carry a tenant column.
const TENANT_READINGS: &str = r#"
[readings]
table = "meter_readings"
tenant_column = "tenant_id"
after_upload = "mark"
columns = [
    { name = "meter_id", type = "varchar(255)", nullable = false },
    { name = "timestamp", type = "timestamp", nullable = false },
    { name = "value", type = "numeric", nullable = false },
    { name = "unit", type = "varchar(50)", nullable = false },
    { name = "tenant_id", type = "bigint" },
]
"#;

// The integrity issue, part 2: own and NULL-tenant readings reach the central (NULLs stamped
// with the site's tenant), other tenants' readings are quarantined with the reason, none lost.
#[tokio::test]
async fn readings_of_another_tenant_are_quarantined_never_sent() {
    let env = TestEnv::with_settings("tenant_readings", &[("TENANT_ID", "1")]).await;
    let profile = Profile::parse(TENANT_READINGS, "tenant readings").unwrap();
    migrate_local(&env.local, &profile).await;
    let remote = env.remote.client().await;
    remote
        .batch_execute(
            "create table meter_readings (id bigserial primary key, meter_id varchar(255) not null,
             timestamp timestamp not null, value numeric not null, unit varchar(50) not null,
             tenant_id bigint not null)",
        )
        .await
        .unwrap();
    let local = env.local.client().await;
    local
        .batch_execute(
            "insert into meter_readings (meter_id, timestamp, value, unit, tenant_id) values
             ('own-1', '2026-01-01 00:00', 1.5, 'kWh', 1),
             ('own-2', '2026-01-01 00:15', 2.5, 'kWh', 1),
             ('null-1', '2026-01-01 00:30', 3.5, 'kWh', null),
             ('null-2', '2026-01-01 00:45', 4.5, 'kWh', null),
             ('two-1', '2026-01-01 01:00', 5.5, 'kWh', 2),
             ('two-2', '2026-01-01 01:15', 6.5, 'kWh', 2),
             ('zero-1', '2026-01-01 01:30', 7.5, 'kWh', 0)",
        )
        .await
        .unwrap();
    let report = crate::support::upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(
        (report.uploaded, report.quarantined, report.rejected_count),
        (4, 3, 3)
    );
    assert_eq!(
        rows_text(
            &remote,
            "select meter_id, tenant_id from meter_readings order by meter_id"
        )
        .await,
        ["(null-1,1)", "(null-2,1)", "(own-1,1)", "(own-2,1)"]
    );
    // The local rows are unchanged but for the bookkeeping: NULL stays NULL.
    assert_eq!(
        rows_text(&local, "select meter_id, tenant_id, is_synchronized from meter_readings where meter_id like 'null%' order by 1").await,
        ["(null-1,,t)", "(null-2,,t)"]
    );
    let quarantined = meter_sync::engine::upload::list_quarantined(
        &local,
        profile.readings.as_ref().unwrap(),
        10,
    )
    .await
    .unwrap();
    let listed: Vec<(String, Option<String>)> = quarantined
        .iter()
        .map(|q| (q.row.clone(), q.error.clone()))
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (row, error) in &listed {
        let tenant = if row.contains("zero") { "0" } else { "2" };
        assert_eq!(
            error.as_deref(),
            Some(format!("reading of tenant {tenant}; this site is tenant 1").as_str()),
            "{row}"
        );
    }
    assert!(report.rejected.iter().all(|r| r.quarantined));
    // A second run sends nothing more and loses nothing.
    let again = crate::support::upload(&env, &profile).await;
    assert!(again.success() && again.uploaded == 0, "{again:#?}");
    assert_eq!(count(&local, "meter_readings").await, 7);
    assert_eq!(count(&remote, "meter_readings").await, 4);
}

/// The entities of a download that failed, in run order.
fn failed(report: &meter_sync::engine::download::DownloadReport) -> Vec<&str> {
    report
        .entities
        .iter()
        .filter(|e| !e.success)
        .map(|e| e.entity.as_str())
        .collect()
}

/// Four independent entities, so one's failure cannot change what the others should become.
const TABLES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn four_entities() -> Profile {
    let text: String = TABLES
        .iter()
        .map(|name| {
            format!(
                "[[entity]]\nname = \"{name}\"\nkey = \"id\"\ncolumns = [{{ name = \"id\", type = \"bigint\", nullable = false }}, {{ name = \"v\", type = \"text\" }}]\n\n"
            )
        })
        .collect();
    Profile::parse(&text, "four").unwrap()
}

/// Ways an entity fails: the set-up that breaks it and what its error must say.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// A bookkeeping column missing locally (a half-done migrate).
    MissingBookkeeping,
    /// A COPY refused before it starts (the local table is an empty view): the driver's
    /// connection is left unusable, so the run starts again without the entity.
    CopyRefusedAtStart,
    /// A local check constraint refusing a remote row in the middle of the COPY (cold path).
    CopyRefusedMidStream,
    /// A constraint violated by an update (diff path).
    ConstraintOnUpdate,
    /// The remote table cannot be read.
    RemoteQueryError,
    /// A statement stuck on a remote lock until the statement timeout.
    StatementTimeout,
}

impl Failure {
    const ALL: [Failure; 6] = [
        Failure::MissingBookkeeping,
        Failure::CopyRefusedAtStart,
        Failure::CopyRefusedMidStream,
        Failure::ConstraintOnUpdate,
        Failure::RemoteQueryError,
        Failure::StatementTimeout,
    ];

    fn expected_error(self, table: &str) -> String {
        match self {
            Failure::MissingBookkeeping => {
                format!("local table {table} lacks meter_sync_version: run `meter-sync migrate`")
            }
            Failure::CopyRefusedAtStart => format!("cannot copy to view \"{table}\""),
            Failure::CopyRefusedMidStream | Failure::ConstraintOnUpdate => {
                format!("violates check constraint \"{table}_v_check\"")
            }
            Failure::RemoteQueryError => format!("relation \"{table}\" does not exist"),
            Failure::StatementTimeout => "canceling statement due to statement timeout".into(),
        }
    }
}

// The integrity issue, part 3 (spec 004 property 15, spec 000 error handling): whatever the
// failure and wherever the failing entity stands, it alone fails; every other entity is
// applied exactly as without the failure, and the failing one is left as it was.
#[tokio::test]
async fn one_failing_entity_rolls_back_alone_whatever_the_failure_and_position() {
    let profile = four_entities();
    for failure in Failure::ALL {
        for (position, failing) in TABLES.into_iter().enumerate() {
            let label = format!("alone_{position}_{failure:?}");
            let env = TestEnv::with_settings(
                &label,
                &[("TENANT_ID", "1"), ("DB_STATEMENT_TIMEOUT_MS", "1500")],
            )
            .await;
            let remote = env.remote.client().await;
            let local = env.local.client().await;
            for table in TABLES {
                remote
                    .batch_execute(&format!(
                        "create table {table} (id bigint primary key, v text);
                         insert into {table} select i, 'v' || i from generate_series(1, 20) i"
                    ))
                    .await
                    .unwrap();
            }
            migrate_local(&env.local, &profile).await;
            assert!(download(&env, &profile, Some("1"), &[]).await.success());
            // The central changes every table: updates, inserts, deletes.
            for table in TABLES {
                remote
                    .batch_execute(&format!(
                        "update {table} set v = 'changed' where id <= 5; delete from {table} where id > 18;
                         insert into {table} values (100, 'new'), (101, 'bad')"
                    ))
                    .await
                    .unwrap();
            }
            let mut _lock = None;
            match failure {
                Failure::MissingBookkeeping => local
                    .batch_execute(&format!("alter table {failing} drop column meter_sync_version"))
                    .await
                    .unwrap(),
                Failure::CopyRefusedAtStart => local
                    .batch_execute(&format!(
                        "truncate {failing}; alter table {failing} rename to {failing}_data;
                         create view {failing} as select * from {failing}_data"
                    ))
                    .await
                    .unwrap(),
                Failure::CopyRefusedMidStream => local
                    .batch_execute(&format!(
                        "truncate {failing}; alter table {failing} add constraint {failing}_v_check check (v <> 'bad')"
                    ))
                    .await
                    .unwrap(),
                Failure::ConstraintOnUpdate => {
                    local
                        .batch_execute(&format!(
                            "alter table {failing} add constraint {failing}_v_check check (v <> 'changed')"
                        ))
                        .await
                        .unwrap();
                }
                Failure::RemoteQueryError => remote
                    .batch_execute(&format!("alter table {failing} rename to {failing}_elsewhere"))
                    .await
                    .unwrap(),
                Failure::StatementTimeout => {
                    let blocker = env.remote.client().await;
                    blocker
                        .batch_execute(&format!("begin; lock table {failing} in access exclusive mode"))
                        .await
                        .unwrap();
                    _lock = Some(blocker);
                }
            }
            let before = rows_text(&local, &format!("select * from {failing} order by id")).await;
            let report = download(&env, &profile, Some("1"), &[]).await;
            drop(_lock);
            assert_eq!(
                failed(&report),
                [failing],
                "{failure:?} at {position}: {report:#?}"
            );
            let error = report.entity(failing).unwrap().error.clone().unwrap();
            assert!(
                error.contains(&failure.expected_error(failing)),
                "{failure:?} at {position}: {error}"
            );
            assert_eq!(
                rows_text(&local, &format!("select * from {failing} order by id")).await,
                before,
                "{failure:?} at {position}: the failing entity was changed"
            );
            for table in TABLES.iter().filter(|t| **t != failing) {
                assert_eq!(
                    rows_text(&local, &format!("select id, v from {table} order by id")).await,
                    rows_text(&remote, &format!("select id, v from {table} order by id")).await,
                    "{failure:?} at {position}: {table} differs from the central"
                );
                let entity = report.entity(table).unwrap();
                assert_eq!(
                    (entity.inserted, entity.updated, entity.deleted),
                    (2, 5, 2),
                    "{failure:?} at {position}: {table} counts"
                );
            }
        }
    }
}

// The integrity issue, part 4: a local foreign key from device_register to register, and the
// central deleting a register with its associations: one run (the real binary) applies
// everything and exits 0, children removed before their parent.
#[tokio::test]
async fn a_parent_and_its_children_deleted_together_are_removed_in_one_run() {
    let (env, profile) = default_env("fk_one_run").await;
    let local = env.local.client().await;
    local
        .batch_execute(
            "alter table device_register add foreign key (register_id) references register (id)",
        )
        .await
        .unwrap();
    assert!(download(&env, &profile, Some("1"), &[]).await.success());
    let remote = env.remote.client().await;
    remote
        .batch_execute(
            "update register set name = 'renamed' where id = (select max(id) from register where tenant_id = 1);
             delete from device_register where register_id = (select min(id) from register where tenant_id = 1);
             delete from register where id = (select min(id) from register where tenant_id = 1)",
        )
        .await
        .unwrap();
    let vars = env.env(&[("TENANT_ID", "1")]);
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        crate::check::meter_sync(&vars, &["download", "--json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deleted: Vec<(String, u64)> = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["entity"].as_str().unwrap().to_string(),
                e["deleted"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        deleted,
        [
            ("tenant".into(), 0),
            ("meter".into(), 0),
            ("register".into(), 1),
            ("device_register".into(), 6)
        ]
    );
    assert_eq!(
        rows_text(&local, "select id, name from register order by id").await,
        rows_text(
            &remote,
            "select id, name from register where tenant_id = 1 order by id"
        )
        .await
    );
    assert_eq!(
        rows_text(&local, "select device_id, register_id from device_register order by 1, 2").await,
        rows_text(&remote, "select device_id, register_id from device_register where register_id in (select id from register where tenant_id = 1) order by 1, 2").await
    );
}

// The integrity issue, part 4: a site table the profile does not know references a register
// the central deleted: register fails alone, naming the constraint and the referencing table,
// and is left whole (its other changes wait too); every other entity is applied.
#[tokio::test]
async fn a_foreign_key_the_profile_does_not_know_fails_that_entity_alone() {
    let (env, profile) = default_env("fk_unknown").await;
    assert!(download(&env, &profile, Some("1"), &[]).await.success());
    let local = env.local.client().await;
    let first: i64 = local
        .query_one("select min(id) from register", &[])
        .await
        .unwrap()
        .get(0);
    local
        .batch_execute(&format!(
            "create table site_note (register_id bigint references register (id), note text);
             insert into site_note values ({first}, 'calibrated')"
        ))
        .await
        .unwrap();
    let before = rows_text(&local, "select * from register order by id").await;
    let remote = env.remote.client().await;
    remote
        .batch_execute(&format!(
            "update register set name = 'renamed' where id = (select max(id) from register where tenant_id = 1);
             delete from device_register where register_id = {first};
             delete from register where id = {first};
             update meter set name = 'meter renamed' where tenant_id = 1 and id = 1"
        ))
        .await
        .unwrap();
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert_eq!(failed(&report), ["register"], "{report:#?}");
    let error = report.entity("register").unwrap().error.clone().unwrap();
    assert!(
        error.starts_with("cannot remove the rows of register gone remotely: local table site_note still references them (constraint site_note_register_id_fkey); nothing of register was changed"),
        "{error}"
    );
    assert_eq!(
        rows_text(&local, "select * from register order by id").await,
        before
    );
    assert_eq!(report.entity("device_register").unwrap().deleted, 6);
    assert_eq!(report.entity("meter").unwrap().updated, 1);
    assert_eq!(
        rows_text(
            &local,
            "select name from meter where id = 1 order by meter_element_id"
        )
        .await,
        rows_text(
            &remote,
            "select name from meter where tenant_id = 1 and id = 1 order by meter_element_id"
        )
        .await
    );
}
