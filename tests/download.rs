//! The download engine against real clusters: examples of each behaviour.

use meter_sync::fixture::{FixtureSize, Layout};
use meter_sync::profile::{db_sync_process_tenant_scoped_toml, Profile};

use crate::support::{
    count, database_checksum, default_env, download, load_remote_fixture, migrate_local,
    quiet_default_env, rows_text, TestEnv,
};

const METER_COLUMNS: &str = "id, meter_element_id, device_id, name, type, serial_number, installation_date, location_id, ip, port, protocol, status, register_map, element, notes, active, created_at, updated_at";

#[tokio::test]
async fn first_download_mirrors_only_the_tenants_rows() {
    let (env, profile) = default_env("dl_first").await;
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.tenant.as_deref(), Some("1"));
    let counts: Vec<(&str, u64, u64)> = report
        .entities
        .iter()
        .map(|e| (e.entity.as_str(), e.fetched, e.inserted))
        .collect();
    assert_eq!(
        counts,
        [
            ("tenant", 1, 1),
            ("meter", 25, 25),
            ("register", 10, 10),
            ("device_register", 75, 75)
        ]
    );
    let local = env.local.client().await;
    let remote = env.remote.client().await;
    assert_eq!(
        rows_text(&local, &format!("select {METER_COLUMNS} from meter order by id, meter_element_id")).await,
        rows_text(&remote, &format!("select {METER_COLUMNS} from meter where tenant_id = 1 order by id, meter_element_id")).await,
    );
    assert_eq!(
        rows_text(&local, "select id, name, register, unit, field_name from register order by id").await,
        rows_text(&remote, "select id, name, register, unit, field_name from register where tenant_id = 1 order by id").await,
    );
    // The meter report names each new meter (spec 004 property 9).
    let meter = report.entity("meter").unwrap();
    assert_eq!(meter.new_rows.len(), 25);
    assert_eq!(meter.new_rows[0].key, ["1", "1"]);
    assert_eq!(meter.new_rows[0].name.as_deref(), Some("Meter 1-1"));
    // One sync_logs row per entity; the view shows the meter row.
    let logs = rows_text(
        &local,
        "select entity, success, inserted from sync_logs order by id",
    )
    .await;
    assert_eq!(
        logs,
        [
            "(tenant,t,1)",
            "(meter,t,25)",
            "(register,t,10)",
            "(device_register,t,75)"
        ]
    );
    assert_eq!(
        rows_text(&local, "select inserted_count from meter_sync_log").await,
        ["(25)"]
    );
}

#[tokio::test]
async fn second_download_changes_nothing_and_remote_is_untouched() {
    let (env, profile) = default_env("dl_idem").await;
    let remote = env.remote.client().await;
    let remote_before = database_checksum(&remote).await;
    assert!(download(&env, &profile, Some("2"), &[]).await.success());
    let local = env.local.client().await;
    let local_after_first: Vec<String> = {
        let mut v = Vec::new();
        for t in ["tenant", "meter", "register", "device_register"] {
            v.push(crate::support::table_checksum(&local, t).await);
        }
        v
    };
    let second = download(&env, &profile, None, &[]).await;
    assert!(second.success(), "{second:#?}");
    assert_eq!(
        second.tenant.as_deref(),
        Some("2"),
        "taken from the local tenant table"
    );
    for e in &second.entities {
        assert_eq!(
            (e.inserted, e.updated, e.deleted, e.skipped),
            (0, 0, 0, 0),
            "{e:#?}"
        );
    }
    let mut after = Vec::new();
    for t in ["tenant", "meter", "register", "device_register"] {
        after.push(crate::support::table_checksum(&local, t).await);
    }
    assert_eq!(after, local_after_first);
    assert_eq!(database_checksum(&remote).await, remote_before);
}

#[tokio::test]
async fn remote_changes_are_applied_with_exact_counts_and_changed_columns() {
    let (env, profile) = default_env("dl_changes").await;
    assert!(download(&env, &profile, Some("1"), &[]).await.success());
    let remote = env.remote.client().await;
    remote
        .batch_execute(
            "update meter set name = 'Renamed', port = 1502 where id = 3;
             update meter set notes = null where id = 5;
             delete from meter where id = 4;
             insert into meter (id, meter_element_id, tenant_id, device_id, name) values (999, 1, 1, 100999, 'Brand new');
             delete from register where id = 2;
             update tenant set name = 'Tenant One', metadata = '{\"plan\": \"gold\"}' where tenant_id = 1;
             update tenant set name = 'Other tenant changed' where tenant_id = 2;",
        )
        .await
        .unwrap();
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{report:#?}");
    let meter = report.entity("meter").unwrap();
    assert_eq!(
        (meter.inserted, meter.updated, meter.deleted),
        (1, 2, 1),
        "{meter:#?}"
    );
    let changed: Vec<(Vec<String>, Vec<String>)> = meter
        .changed_rows
        .iter()
        .map(|c| (c.key.clone(), c.columns.clone()))
        .collect();
    assert!(
        changed.contains(&(
            vec!["3".into(), "1".into()],
            vec!["name".into(), "port".into()]
        )),
        "{changed:?}"
    );
    assert!(
        changed.contains(&(vec!["5".into(), "1".into()], vec!["notes".into()])),
        "{changed:?}"
    );
    assert_eq!(meter.new_rows[0].name.as_deref(), Some("Brand new"));
    assert_eq!(meter.removed_keys, [vec!["4".to_string(), "1".to_string()]]);
    let tenant = report.entity("tenant").unwrap();
    assert_eq!(tenant.updated, 1, "only the site's tenant");
    assert_eq!(tenant.changed_rows[0].columns, ["name", "metadata"]);

    let local = env.local.client().await;
    assert_eq!(
        rows_text(&local, "select active from meter where id = 4").await,
        ["(f)"],
        "deactivated, not deleted"
    );
    assert_eq!(count(&local, "meter").await, 26);
    let register = report.entity("register").unwrap();
    assert_eq!(register.deleted, 1);
    assert_eq!(
        rows_text(&local, "select id from register where id = 2").await,
        Vec::<String>::new()
    );
    // Associations of the deleted register are gone too (the remote query no longer returns
    // them), and none points at a missing register.
    let dr = report.entity("device_register").unwrap();
    assert!(dr.deleted > 0, "{dr:#?}");
    let dangling: i64 = local
        .query_one("select count(*) from device_register d where not exists (select 1 from register r where r.id = d.register_id)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dangling, 0);
    // A meter that comes back is reactivated.
    remote
        .batch_execute("insert into meter (id, meter_element_id, tenant_id, name, active) values (4, 1, 1, 'Back', true)")
        .await
        .unwrap();
    let again = download(&env, &profile, Some("1"), &["meter"]).await;
    let meter = again.entity("meter").unwrap();
    assert_eq!(meter.updated, 1);
    assert!(meter.changed_rows[0]
        .columns
        .contains(&"active".to_string()));
    assert_eq!(
        rows_text(&local, "select active, name from meter where id = 4").await,
        ["(t,Back)"]
    );
}

#[tokio::test]
async fn association_with_a_missing_device_is_skipped_with_its_key() {
    let (env, profile) = default_env("dl_skip").await;
    let remote = env.remote.client().await;
    remote
        .batch_execute(
            "insert into device_register (id, device_id, register_id) values (5000, 777777, 1)",
        )
        .await
        .unwrap();
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{report:#?}");
    let dr = report.entity("device_register").unwrap();
    assert_eq!((dr.fetched, dr.inserted, dr.skipped), (76, 75, 1));
    assert_eq!(
        dr.skipped_keys,
        [vec!["777777".to_string(), "1".to_string()]]
    );
    let local = env.local.client().await;
    assert_eq!(
        rows_text(
            &local,
            "select id from device_register where device_id = 777777"
        )
        .await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_failing_entity_rolls_back_alone_and_the_next_still_runs() {
    let (env, profile) = default_env("dl_isolate").await;
    let remote = env.remote.client().await;
    remote
        .batch_execute("alter table register rename column field_name to field")
        .await
        .unwrap();
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(!report.success());
    let register = report.entity("register").unwrap();
    assert!(!register.success);
    let error = register.error.as_deref().unwrap();
    assert!(
        error.contains("remote database") && error.contains("field_name"),
        "{error}"
    );
    for name in ["tenant", "meter", "device_register"] {
        assert!(report.entity(name).unwrap().success, "{name}: {report:#?}");
    }
    let local = env.local.client().await;
    assert_eq!(count(&local, "meter").await, 25);
    assert_eq!(count(&local, "register").await, 0);
    // Without local registers every association is skipped, never inserted.
    assert_eq!(report.entity("device_register").unwrap().skipped, 75);
    assert_eq!(count(&local, "device_register").await, 0);
    let failed = rows_text(&local, "select entity from sync_logs where not success").await;
    assert_eq!(failed, ["(register)"]);
}

#[tokio::test]
async fn a_type_mismatch_is_reported_before_copying() {
    let (env, profile) = default_env("dl_types").await;
    let remote = env.remote.client().await;
    remote
        .batch_execute("alter table meter alter column port type bigint")
        .await
        .unwrap();
    let report = download(&env, &profile, Some("1"), &[]).await;
    let error = report.entity("meter").unwrap().error.clone().unwrap();
    assert!(
        error.starts_with("meter: column types could change or refuse values on the way, so nothing of meter was applied: port: remote int8, local int4 (int4 refuses values outside its range; allowed per value with convert = \"checked\" on the column: a value that does not fit is then refused on its own, never altered)"),
        "{error}"
    );
    assert!(report.entity("register").unwrap().success);
}

#[tokio::test]
async fn duplicate_remote_keys_and_constraint_violations_name_the_key_or_column() {
    let (env, profile) = default_env("dl_dupes").await;
    let remote = env.remote.client().await;
    remote
        .batch_execute("alter table meter drop constraint meter_pkey; insert into meter (id, meter_element_id, tenant_id, name) values (1, 1, 1, 'row-value-xyz')")
        .await
        .unwrap();
    // Cold path (empty local table): rebuilding the local primary key refuses the duplicate.
    let report = download(&env, &profile, Some("1"), &[]).await;
    let error = report.entity("meter").unwrap().error.clone().unwrap();
    assert!(
        error.contains("Key (id, meter_element_id)=(1, 1) is duplicated"),
        "{error}"
    );
    assert!(
        !error.contains("row-value-xyz") && !error.contains("db error"),
        "no row values, no repetition: {error}"
    );
    // Diff path (local rows present): the hash stage's key index refuses it.
    remote
        .batch_execute("delete from meter where name = 'row-value-xyz'")
        .await
        .unwrap();
    assert!(download(&env, &profile, Some("1"), &[]).await.success());
    remote
        .batch_execute("insert into meter (id, meter_element_id, tenant_id, name) values (1, 1, 1, 'row-value-xyz')")
        .await
        .unwrap();
    let report = download(&env, &profile, Some("1"), &[]).await;
    let error = report.entity("meter").unwrap().error.clone().unwrap();
    assert!(
        error.contains("Key (id, meter_element_id)=(1, 1) is duplicated"),
        "{error}"
    );

    remote.batch_execute("alter table register alter column name drop not null; update register set name = null where id = 3").await.unwrap();
    let report = download(&env, &profile, Some("1"), &["register"]).await;
    let error = report.entity("register").unwrap().error.clone().unwrap();
    assert!(error.contains("null value in column \"name\""), "{error}");
    assert!(error.contains("table register"), "{error}");
}

#[tokio::test]
async fn tenant_comes_from_config_or_the_single_local_row_and_mismatches_are_refused() {
    let (env, profile) = default_env("dl_tenant").await;
    let report = download(&env, &profile, None, &[]).await;
    assert!(!report.success());
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("set TENANT_ID for the first sync"),
        "{report:#?}"
    );
    assert!(download(&env, &profile, Some("1"), &[]).await.success());
    let local = env.local.client().await;
    let before = database_checksum(&local).await;
    let report = download(&env, &profile, Some("2"), &[]).await;
    let error = report.error.clone().unwrap();
    assert!(
        error.contains("TENANT_ID=2 differs from the tenant already in the local table tenant (1)"),
        "{error}"
    );
    let after = database_checksum(&local).await;
    // Only sync_logs gained rows recording the refusal.
    let changed: Vec<&String> = after
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| &a.0)
        .collect();
    assert_eq!(changed, [&"sync_logs".to_string()]);
}

#[tokio::test]
async fn an_unreachable_remote_fails_the_run_clearly_after_retries() {
    let mut env = TestEnv::with_settings("dl_down", &[("MAX_CONNECTION_RETRIES", "2")]).await;
    load_remote_fixture(&env.remote, Layout::Default, FixtureSize::default()).await;
    let profile = Profile::builtin_default().unwrap();
    migrate_local(&env.local, &profile).await;
    // A port that accepts and hangs up at once: every attempt is counted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().port();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    env.config.remote.port = closed;
    let report = download(&env, &profile, Some("1"), &[]).await;
    let error = report.error.clone().unwrap();
    assert!(
        error.contains(&format!("remote database 127.0.0.1:{closed}/")),
        "{error}"
    );
    assert!(report
        .entities
        .iter()
        .all(|e| !e.success && e.error.is_some()));
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one try and MAX_CONNECTION_RETRIES=2 retries"
    );
    let local = env.local.client().await;
    assert_eq!(count(&local, "meter").await, 0);
    assert_eq!(count(&local, "sync_logs").await, 4);
}

#[tokio::test]
async fn a_new_table_syncs_through_a_profile_alone() {
    let env = TestEnv::new("dl_location").await;
    let remote = env.remote.client().await;
    remote
        .batch_execute(
            "create table location (id integer primary key, site text not null, label text, geo jsonb, tenant text not null);
             insert into location values (1, 'North', 'Gate \"A\"', '{\"lat\": 1.5}', 'acme'), (2, 'Süd', null, null, 'acme'), (3, 'Other', 'x', null, 'globex');",
        )
        .await
        .unwrap();
    let text = r#"
[[entity]]
name = "location"
key = "id"
tenant_column = "tenant"
on_missing = "delete"
columns = [
    { name = "id", type = "integer", nullable = false },
    { name = "site", type = "text", nullable = false },
    { name = "label", type = "text" },
    { name = "geo", type = "jsonb" },
]
"#;
    let profile = Profile::parse(text, "location.toml").unwrap();
    migrate_local(&env.local, &profile).await;
    let report = download(&env, &profile, Some("acme"), &[]).await;
    assert_eq!(
        report.entity("location").unwrap().inserted,
        2,
        "{report:#?}"
    );
    remote
        .batch_execute("update location set label = 'Gate B' where id = 1; delete from location where id = 2; insert into location values (4, 'East', null, null, 'acme')")
        .await
        .unwrap();
    let report = download(&env, &profile, Some("acme"), &[]).await;
    let location = report.entity("location").unwrap();
    assert_eq!(
        (location.inserted, location.updated, location.deleted),
        (1, 1, 1),
        "{location:#?}"
    );
    let local = env.local.client().await;
    assert_eq!(
        rows_text(&local, "select id, site, label from location order by id").await,
        ["(1,North,\"Gate B\")", "(4,East,)"]
    );
}

#[tokio::test]
async fn the_db_sync_process_profile_mirrors_varchar_keyed_tables() {
    let env = TestEnv::new("dl_004").await;
    load_remote_fixture(&env.remote, Layout::DbSyncProcess, FixtureSize::default()).await;
    let profile = Profile::parse(&db_sync_process_tenant_scoped_toml(), "004").unwrap();
    migrate_local(&env.local, &profile).await;
    let report = download(&env, &profile, Some("tenant-2"), &[]).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.entity("meters").unwrap().inserted, 25);
    assert_eq!(report.entity("meters").unwrap().new_rows[0].key, ["M-2-1"]);
    let remote = env.remote.client().await;
    remote
        .batch_execute("update meters set unit = 'MWh' where meter_id = 'M-2-3'; delete from meters where meter_id = 'M-2-4'; update tenant set metadata = '{}' where tenant_id = 'tenant-2'")
        .await
        .unwrap();
    let report = download(&env, &profile, None, &[]).await;
    assert!(report.success(), "{report:#?}");
    let meters = report.entity("meters").unwrap();
    assert_eq!(
        (meters.updated, meters.deleted),
        (1, 0),
        "kept: 004 only upserts"
    );
    assert_eq!(meters.changed_rows[0].columns, ["unit"]);
    assert_eq!(
        report.entity("tenant").unwrap().changed_rows[0].columns,
        ["metadata"]
    );
    let local = env.local.client().await;
    assert_eq!(count(&local, "meters").await, 25);
    assert_eq!(
        rows_text(&local, "select tenant_id from tenant").await,
        ["(tenant-2)"]
    );
}

#[tokio::test]
async fn cold_incremental_diff_and_full_strategies_are_chosen_by_what_changed() {
    use meter_sync::engine::download::Strategy;
    let (env, profile, _turn) = quiet_default_env("dl_strategy", &[]).await;
    let first = download(&env, &profile, Some("1"), &["meter"]).await;
    assert_eq!(first.entity("meter").unwrap().strategy, Strategy::Cold);
    let remote = env.remote.client().await;
    let local = env.local.client().await;
    let mirrored = || async {
        assert_eq!(
            rows_text(
                &local,
                &format!("select {METER_COLUMNS} from meter where active order by id")
            )
            .await,
            rows_text(
                &remote,
                &format!(
                    "select {METER_COLUMNS} from meter where tenant_id = 1 and active order by id"
                )
            )
            .await,
        );
    };
    // Rows written since the last run travel, and only they.
    remote
        .batch_execute("update meter set notes = 'few' where id in (2, 3)")
        .await
        .unwrap();
    let few = download(&env, &profile, Some("1"), &["meter"]).await;
    let meter = few.entity("meter").unwrap();
    assert_eq!(
        (meter.strategy, meter.updated, meter.fetched),
        (Strategy::Incremental, 2, 2)
    );
    remote
        .batch_execute("update meter set notes = 'many' where tenant_id = 1 and id % 2 = 0")
        .await
        .unwrap();
    let many = download(&env, &profile, Some("1"), &["meter"]).await;
    let meter = many.entity("meter").unwrap();
    assert_eq!(
        (meter.strategy, meter.updated, meter.fetched),
        (Strategy::Incremental, 12, 12)
    );
    mirrored().await;
    // A deleted row leaves no version behind: the key summaries differ, and every row version
    // is compared, in the same run.
    remote
        .batch_execute("delete from meter where id = 5")
        .await
        .unwrap();
    let deleted = download(&env, &profile, Some("1"), &["meter"]).await;
    let meter = deleted.entity("meter").unwrap();
    assert_eq!(
        (meter.strategy, meter.updated, meter.deleted),
        (Strategy::Diff, 0, 1)
    );
    // More than a quarter changed and a row deleted: the diff stages every row instead.
    remote
        .batch_execute(
            "update meter set notes = 'most' where tenant_id = 1 and id % 3 <> 0; delete from meter where id = 7",
        )
        .await
        .unwrap();
    let most = download(&env, &profile, Some("1"), &["meter"]).await;
    let meter = most.entity("meter").unwrap();
    assert_eq!((meter.strategy, meter.deleted), (Strategy::Full, 1));
    mirrored().await;
    let settled = download(&env, &profile, Some("1"), &["meter"]).await;
    let meter = settled.entity("meter").unwrap();
    assert_eq!(
        (meter.strategy, meter.fetched, meter.updated, meter.deleted),
        (Strategy::Incremental, 0, 0, 0)
    );
}

#[tokio::test]
async fn cold_load_rebuilds_the_primary_key_and_keeps_one_a_foreign_key_needs() {
    let (env, profile) = default_env("dl_coldpk").await;
    let local = env.local.client().await;
    local
        .batch_execute(
            "create table register_note (register_id bigint references register (id), note text)",
        )
        .await
        .unwrap();
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{report:#?}");
    for table in ["meter", "register"] {
        let pk: String = local
            .query_one(
                "select pg_get_constraintdef(oid) from pg_constraint where conrelid = $1::text::regclass and contype = 'p'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert!(pk.starts_with("PRIMARY KEY"), "{table}: {pk}");
    }
    local
        .batch_execute("insert into register_note values (1, 'still referenced')")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_remote_table_emptied_by_mistake_does_not_empty_the_site() {
    let (env, profile) = crate::support::default_env("dl_mass_delete").await;
    let first = crate::support::download(&env, &profile, Some("1"), &[]).await;
    assert!(first.success(), "{:?}", first.first_error());
    let local = env.local.client().await;
    let remote = env.remote.client().await;
    let registers_before = crate::support::count(&local, "register").await;
    assert!(registers_before > 0);
    // Someone empties the central register table and deletes most meters of the tenant.
    remote
        .batch_execute(
            "delete from register;
             delete from meter where tenant_id = 1 and id > (select min(id) + 4 from meter where tenant_id = 1)",
        )
        .await
        .unwrap();
    let report = crate::support::download(&env, &profile, Some("1"), &[]).await;
    assert!(!report.success());
    let meter = report.entity("meter").unwrap();
    let error = meter.error.as_deref().unwrap();
    assert!(
        error.starts_with("refusing to deactivate 20 of the 25 local rows of meter (80%, more than MAX_DELETE_FRACTION=0.5"),
        "{error}"
    );
    assert!(
        error.contains("--allow-mass-delete") && error.contains("ALLOW_MASS_DELETE=true"),
        "{error}"
    );
    // Ten rows is not "more than 10": a small table may still lose every row.
    let register = report.entity("register").unwrap();
    assert!(register.success, "{:?}", register.error);
    assert_eq!(register.deleted, registers_before as u64);
    // Nothing of the refused entity changed.
    let active = || async {
        local
            .query_one("select count(*) from meter where active", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(active().await, 25);
    // Allowed on purpose, from the command line: applied.
    let vars = env.env(&[("TENANT_ID", "1")]);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"))
            .args(["download", "--entity", "meter", "--allow-mass-delete"])
            .env_clear()
            .envs(vars)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(active().await, 5);
}

#[tokio::test]
async fn a_tenant_the_remote_does_not_know_is_refused_before_any_write() {
    let (env, profile) = crate::support::default_env("dl_unknown_tenant").await;
    let report = crate::support::download(&env, &profile, Some("424242"), &[]).await;
    assert!(!report.success());
    assert_eq!(
        report.error.as_deref(),
        Some("tenant 424242 is unknown to the remote database (no row in its table tenant); check TENANT_ID. Nothing was changed")
    );
    let local = env.local.client().await;
    for table in ["tenant", "meter", "register", "device_register"] {
        assert_eq!(crate::support::count(&local, table).await, 0, "{table}");
    }
}
