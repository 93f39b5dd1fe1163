//! Fitting an existing system: a central and a site whose tables another system made (its own
//! integer widths, an enum, a renamed column, a uuid-keyed readings table, local foreign keys),
//! already holding data, and a profile written from their DDL alone. Every command runs through
//! the real binary.

use crate::check::meter_sync;
use crate::support::{count, database_checksum, rows_text, TestEnv};

/// The central, as it grew on its own: `bigint` everywhere, an enum, a column called `label`
/// where the site says `name`, and readings keyed by a uuid minted at the site.
const CENTRAL: &str = "
create type meter_kind as enum ('electric', 'water', 'gas', 'heat');
create table tenant (tenant_id bigint primary key, name text not null);
create table meter (
    id bigint primary key,
    tenant_id bigint not null references tenant,
    meter_element_id bigint,
    meter_type meter_kind not null,
    label varchar(40) not null
);
create table register (
    id bigint primary key,
    tenant_id bigint not null,
    register_id bigint not null,
    unit varchar(16),
    scale numeric(8, 2)
);
create table device_register (
    id bigint primary key,
    tenant_id bigint not null,
    meter_id bigint not null,
    register_id bigint not null
);
create table meter_readings (
    id uuid primary key,
    tenant_id bigint,
    meter_id bigint not null,
    meter_element_id bigint,
    register_id bigint not null,
    reading_time timestamp not null,
    value numeric(18, 4) not null check (value < 1000000),
    quality text
);
insert into tenant values (1, 'North Utilities'), (2, 'South Water');
insert into meter
select m, 1 + (m > 20)::int, case when m % 2 = 0 then m * 10 end,
       (array['electric', 'water', 'gas', 'heat']::meter_kind[])[1 + m % 4], 'Meter ' || m
from generate_series(1, 30) m;
insert into register select r, 1 + (r > 8)::int, 40000 + r, 'kWh', r / 4.0 from generate_series(1, 12) r;
insert into device_register
select d, 1 + (d > 16)::int, d, 1 + d % 8 from generate_series(1, 16) d
union all select d, 2, d, 9 + d % 4 from generate_series(17, 20) d;
insert into meter_readings
select gen_random_uuid(), 1, 1, null, 1, timestamp '2025-06-01' + n * interval '1 minute', n, 'old'
from generate_series(1, 5) n;
";

/// The site, made by the old sync process: `integer` widths, the same enum, a uuid key with its
/// own default, local foreign keys, no bookkeeping columns, and data already there.
const SITE: &str = "
create type meter_kind as enum ('electric', 'water', 'gas', 'heat');
create table tenant (tenant_id integer primary key, name varchar(100) not null);
create table meter (
    id integer primary key,
    meter_element_id integer,
    meter_type meter_kind not null,
    name text not null
);
create table register (id integer primary key, register_id integer not null, unit varchar(16), scale numeric(10, 2));
create table device_register (
    id integer primary key,
    meter_id integer not null references meter (id),
    register_id integer not null references register (id)
);
create table meter_readings (
    id uuid primary key default gen_random_uuid(),
    tenant_id bigint,
    meter_id integer not null,
    meter_element_id integer,
    register_id integer not null,
    read_at timestamp not null,
    value numeric(12, 4) not null,
    quality varchar(20)
);
create index meter_readings_sync_queue_idx on meter_readings (read_at);
insert into tenant values (1, 'North (old name)');
insert into meter values (1, null, 'electric', 'stale name'), (99, null, 'gas', 'gone from the central');
insert into meter_readings (tenant_id, meter_id, register_id, read_at, value, quality)
select case when n % 10 = 0 then null else 1 end, 1 + n % 20, 1 + n % 8,
       timestamp '2026-01-01' + n * interval '1 minute', n * 1.25, 'good'
from generate_series(1, 40) n;
insert into meter_readings (tenant_id, meter_id, register_id, read_at, value, quality)
values (2, 25, 9, timestamp '2026-01-02', 1, 'foreign'),
       (1, 3, 1, timestamp '2026-01-03', 5000000, 'huge');
";

/// The profile, written from the DDL above in the natural way: no casting query, no
/// hand-made column.
const PROFILE: &str = r#"
[[entity]]
name = "tenant"
key = "tenant_id"
tenant_column = "tenant_id"
on_missing = "keep"
columns = [
    { name = "tenant_id", type = "integer", nullable = false, convert = "checked" },
    { name = "name", type = "varchar(100)", nullable = false, convert = "checked" },
]

[[entity]]
name = "meter"
key = "id"
tenant_column = "tenant_id"
depends_on = ["tenant"]
columns = [
    { name = "id", type = "integer", nullable = false, convert = "checked" },
    { name = "meter_element_id", type = "integer", convert = "checked" },
    { name = "meter_type", type = "meter_kind", nullable = false },
    { name = "name", type = "text", nullable = false, remote_name = "label" },
]

[[entity]]
name = "register"
key = "id"
tenant_column = "tenant_id"
columns = [
    { name = "id", type = "integer", nullable = false, convert = "checked" },
    { name = "register_id", type = "integer", nullable = false, convert = "checked" },
    { name = "unit", type = "varchar(16)" },
    { name = "scale", type = "numeric(10, 2)" },
]

[[entity]]
name = "device_register"
key = "id"
tenant_column = "tenant_id"
columns = [
    { name = "id", type = "integer", nullable = false, convert = "checked" },
    { name = "meter_id", type = "integer", nullable = false, convert = "checked" },
    { name = "register_id", type = "integer", nullable = false, convert = "checked" },
]
[[entity.references]]
columns = "meter_id"
entity = "meter"
entity_columns = "id"
[[entity.references]]
columns = "register_id"
entity = "register"
entity_columns = "id"

[readings]
table = "meter_readings"
id_column = "id"
order_by = ["read_at", "id"]
tenant_column = "tenant_id"
columns = [
    { name = "id", type = "uuid", nullable = false, default = "gen_random_uuid()" },
    { name = "tenant_id", type = "bigint" },
    { name = "meter_id", type = "integer", nullable = false },
    { name = "meter_element_id", type = "integer" },
    { name = "register_id", type = "integer", nullable = false },
    { name = "read_at", type = "timestamp", nullable = false, remote_name = "reading_time" },
    { name = "value", type = "numeric(12, 4)", nullable = false },
    { name = "quality", type = "varchar(20)" },
]
"#;

/// A fresh central with [`CENTRAL`] and a site with `site` (its DDL and data), and clients
/// to both.
struct Legacy {
    env: TestEnv,
    remote: tokio_postgres::Client,
    local: tokio_postgres::Client,
}

impl Legacy {
    async fn new(label: &str, site: &str) -> Self {
        let env = TestEnv::new(label).await;
        let remote = env.remote.client().await;
        let local = env.local.client().await;
        remote.batch_execute(CENTRAL).await.unwrap();
        local.batch_execute(site).await.unwrap();
        Self { env, remote, local }
    }
}

/// Runs the binary with the profile and the site's tenant; returns (exit code, stdout, stderr).
async fn run(vars: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let vars = vars.to_vec();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        meter_sync(&vars, &args)
    })
    .await
    .unwrap()
}

/// The configuration tables of the central: proof that downloads never change it.
async fn central_configuration(remote: &tokio_postgres::Client) -> Vec<(String, String)> {
    database_checksum(remote)
        .await
        .into_iter()
        .filter(|(table, _)| table != "meter_readings")
        .collect()
}

#[tokio::test]
async fn a_legacy_central_and_site_run_every_command_with_a_profile_from_their_ddl() {
    let Legacy { env, remote, local } = Legacy::new("legacy", SITE).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.toml");
    std::fs::write(&path, PROFILE).unwrap();
    let vars = env.env(&[
        ("SYNC_PROFILE", path.to_str().unwrap()),
        ("TENANT_ID", "1"),
        ("MAX_ROW_FAILURES", "1"),
    ]);
    let central_before = central_configuration(&remote).await;

    // migrate completes the existing tables and says what it changed.
    let (code, out, err) = run(&vars, &["migrate"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for change in [
        "added column \"meter\".\"meter_sync_version\"",
        "added column \"meter_readings\".\"is_synchronized\"",
        "added column \"meter_readings\".\"quarantined_at\"",
        "rebuilt index \"meter_readings_sync_queue_idx\" on (is_synchronized, read_at, id) (it was on (read_at))",
    ] {
        assert!(out.contains(change), "{change:?} missing from:\n{out}");
    }
    assert!(!out.contains("warning"), "{out}");
    let (code, out, _) = run(&vars, &["migrate"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("local schema is up to date"), "{out}");

    // check prepares everything and passes.
    let (code, out, err) = run(&vars, &["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("entity device_register: ok"), "{out}");
    assert!(
        out.contains("readings meter_readings -> remote meter_readings: ok"),
        "{out}"
    );

    // download: tenant 1 only, types converted in the COPY, the renamed column mapped, the
    // enum compared by name and labels.
    let (code, out, err) = run(&vars, &["download", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        rows_text(&local, "select tenant_id, name from tenant").await,
        ["(1,\"North Utilities\")"]
    );
    assert_eq!(
        count(&local, "meter").await,
        20,
        "meter 99 deleted, 20 of tenant 1"
    );
    assert_eq!(
        rows_text(
            &local,
            "select id, meter_element_id, meter_type, name from meter where id in (1, 2, 3) order by id"
        )
        .await,
        [
            "(1,,water,\"Meter 1\")",
            "(2,20,gas,\"Meter 2\")",
            "(3,,heat,\"Meter 3\")"
        ]
    );
    assert_eq!(count(&local, "register").await, 8);
    assert_eq!(count(&local, "device_register").await, 16);
    assert_eq!(
        rows_text(&local, "select scale from register where id = 3").await,
        ["(0.75)"]
    );
    // A second download changes nothing and keeps the cheap change tracking: the tables are
    // read from remote tables, so only rows written since the first run's snapshot travel
    // (how many exactly depends on other tests' transactions on the shared central; counted
    // exactly in `incremental::`).
    let (code, out, _) = run(&vars, &["download", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    for entity in report["entities"].as_array().unwrap() {
        assert_eq!(entity["inserted"], 0, "{entity}");
        assert_eq!(entity["updated"], 0, "{entity}");
        assert_eq!(entity["strategy"], "incremental", "{entity}");
    }

    // upload: uuid keys, the renamed column, widening types; the other tenant's reading and
    // the one the central refuses are quarantined, never sent.
    let (code, out, err) = run(&vars, &["upload", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["uploaded"], 40, "{report:#}");
    assert_eq!(report["quarantined"], 2, "{report:#}");
    assert_eq!(count(&remote, "meter_readings").await, 5 + 40);
    assert_eq!(
        rows_text(
            &remote,
            "select count(*), count(distinct id), min(tenant_id), max(tenant_id) from meter_readings where quality = 'good'"
        )
        .await,
        ["(40,40,1,1)"],
        "NULL tenants stamped with the site's, nothing of tenant 2"
    );
    // The same readings on both sides, by uuid and every value.
    let sent = rows_text(&remote, "select id, meter_id, register_id, reading_time, value from meter_readings where quality = 'good' order by id").await;
    assert_eq!(sent.len(), 40);
    assert_eq!(
        count(&local, "meter_readings").await,
        2,
        "only the quarantined stay"
    );

    // The refused reading is listed and released by its uuid.
    let (code, out, _) = run(&vars, &["quarantine", "list", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let refused: Vec<&serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["error"].as_str().unwrap().contains("value_check"))
        .collect();
    assert_eq!(refused.len(), 1, "{list:#}");
    let uuid = refused[0]["id"].as_str().unwrap().to_string();
    assert_eq!(uuid.len(), 36, "{uuid}");
    let foreign = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["error"] == "reading of tenant 2; this site is tenant 1");
    assert!(foreign.is_some(), "{list:#}");

    // New readings, then `once`: both parts, readings exactly once.
    local
        .batch_execute(
            "insert into meter_readings (tenant_id, meter_id, register_id, read_at, value, quality)
             select 1, 1 + n % 20, 1, timestamp '2026-02-01' + n * interval '1 minute', n, 'good'
             from generate_series(1, 25) n",
        )
        .await
        .unwrap();
    let (code, out, err) = run(&vars, &["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(count(&remote, "meter_readings").await, 5 + 40 + 25);
    let (code, out, err) = run(
        &vars,
        &[
            "quarantine",
            "release",
            "--id",
            &uuid,
            "--id",
            &uuid,
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let released: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        released,
        serde_json::json!({ "released": 1, "ids": [uuid] }),
        "{out}"
    );
    let (code, _, _) = run(&vars, &["once"]).await;
    assert_eq!(
        code, 0,
        "the released reading is refused again, the run goes on"
    );
    assert_eq!(
        rows_text(
            &remote,
            "select count(*), count(distinct id) from meter_readings"
        )
        .await,
        ["(70,70)"],
        "every reading exactly once"
    );
    assert_eq!(
        central_configuration(&remote).await,
        central_before,
        "downloads never change the central"
    );
}

#[tokio::test]
async fn a_checked_value_that_does_not_fit_fails_its_entity_or_quarantines_its_reading() {
    let Legacy { env, remote, local } = Legacy::new("legacy_fit", SITE).await;
    remote
        .batch_execute("update register set register_id = 3000000000 where id = 5")
        .await
        .unwrap();
    let profile = meter_sync::profile::Profile::parse(PROFILE, "legacy").unwrap();
    let types = meter_sync::data::schema::TypeSource {
        remote: &env.config.remote,
        pool: &env.config.pool,
    };
    let mut client = env.local.client().await;
    meter_sync::data::schema::migrate_with(&mut client, &profile, Some(types))
        .await
        .unwrap();
    let report = crate::support::download(&env, &profile, Some("1"), &[]).await;
    let error = report.entity("register").unwrap().error.clone().unwrap();
    assert!(
        error.starts_with("register: the remote row with key (id)=(5) has register_id = 3000000000, which the local int4 cannot hold (convert = \"checked\"), so nothing of register was applied"),
        "{error}"
    );
    assert!(report.entity("meter").unwrap().success);
    assert_eq!(count(&local, "register").await, 0);
    // device_register references registers: skipped rows, never a half-applied register.
    let devices = report.entity("device_register").unwrap();
    assert!(devices.success, "{devices:#?}");

    // Upload: a central column narrower than the site's, checked: the reading that does not
    // fit is quarantined with the reason, the rest go.
    remote
        .batch_execute("alter table meter_readings alter column register_id type integer")
        .await
        .unwrap();
    local
        .batch_execute(
            "alter table meter_readings alter column register_id type bigint;
             update meter_readings set register_id = 5000000000 where value = 2.5;
             delete from meter_readings where quality <> 'good'",
        )
        .await
        .unwrap();
    let text = PROFILE.replace(
        "{ name = \"register_id\", type = \"integer\", nullable = false },",
        "{ name = \"register_id\", type = \"bigint\", nullable = false, convert = \"checked\" },",
    );
    let checked = meter_sync::profile::Profile::parse(&text, "legacy").unwrap();
    let report = crate::support::upload(&env, &checked).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(
        (report.uploaded, report.quarantined),
        (39, 1),
        "{report:#?}"
    );
    assert_eq!(
        report.rejected[0].error,
        "register_id = 5000000000 does not fit the remote int4 (convert = \"checked\")"
    );
    // Unchecked, the same pair is refused before anything moves, saying how to allow it.
    local
        .batch_execute(
            "insert into meter_readings (meter_id, register_id, read_at, value) values (1, 1, '2026-03-01', 1)",
        )
        .await
        .unwrap();
    let unchecked = text.replace(
        "type = \"bigint\", nullable = false, convert = \"checked\"",
        "type = \"bigint\", nullable = false",
    );
    let unchecked = meter_sync::profile::Profile::parse(&unchecked, "legacy").unwrap();
    let report = crate::support::upload(&env, &unchecked).await;
    let error = report.error.unwrap();
    assert!(
        error.contains("register_id: remote int4, local int8 (int4 refuses values outside its range; allowed per value with convert = \"checked\""),
        "{error}"
    );
}

#[tokio::test]
async fn check_lists_every_problem_of_the_profile_at_once() {
    let Legacy { env, local, .. } = Legacy::new("legacy_check", SITE).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.toml");
    let broken = PROFILE
        // A typo in a remote query, found by preparing it.
        .replace(
            "name = \"register\"\nkey = \"id\"\ntenant_column = \"tenant_id\"",
            "name = \"register\"\nkey = \"id\"\nremote_query = \"select id, register_id, unit, scale from registr where tenant_id = $tenant_id\"",
        )
        // A narrowing pair without convert = "checked".
        .replace(
            "{ name = \"id\", type = \"integer\", nullable = false, convert = \"checked\" },\n    { name = \"meter_id\"",
            "{ name = \"id\", type = \"integer\", nullable = false },\n    { name = \"meter_id\"",
        );
    std::fs::write(&path, &broken).unwrap();
    let vars = env.env(&[("SYNC_PROFILE", path.to_str().unwrap()), ("TENANT_ID", "1")]);
    let (code, out, err) = run(&vars, &["migrate"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // A column the local table lacks (dropped after migrate).
    local
        .batch_execute("alter table meter drop column meter_element_id")
        .await
        .unwrap();
    let before = database_checksum(&local).await;
    let (code, out, err) = run(&vars, &["check"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("3 problem(s)"), "{out}");
    assert!(out.contains("entity tenant: ok"), "{out}");
    assert!(
        out.contains("entity meter: FAILED: local table meter lacks meter_element_id"),
        "{out}"
    );
    assert!(
        out.contains("entity register: FAILED: remote database: prepare the remote query: relation \"registr\" does not exist"),
        "{out}"
    );
    assert!(
        out.contains("entity device_register: FAILED: device_register: column types could change or refuse values on the way, so nothing of device_register was applied: id: remote int8, local int4 (int4 refuses values outside its range; allowed per value with convert = \"checked\""),
        "{out}"
    );
    assert!(
        out.contains("readings meter_readings -> remote meter_readings: ok"),
        "{out}"
    );
    assert_eq!(
        database_checksum(&local).await,
        before,
        "check writes nothing"
    );
}

#[tokio::test]
async fn migrate_creates_a_missing_enum_as_the_remote_defines_it_and_completes_a_readings_table() {
    let Legacy { env, remote, local } = Legacy::new("legacy_enum", "").await;
    remote
        .batch_execute(
            "alter table meter add column batch bigint;
             alter table meter_readings alter column id set default gen_random_uuid()",
        )
        .await
        .unwrap();
    // A readings table made by hand, half of what the profile needs: no id, no bookkeeping.
    local
        .batch_execute(
            "create table meter_readings (meter_id integer not null, register_id integer not null,
                 read_at timestamp not null, value numeric(12, 4) not null);
             insert into meter_readings values (1, 1, '2026-01-01', 1), (2, 1, '2026-01-01', 2)",
        )
        .await
        .unwrap();
    let text = r#"
[[entity]]
name = "meter"
key = "id"
tenant_column = "tenant_id"
columns = [
    { name = "id", type = "bigint", nullable = false },
    { name = "meter_type", type = "meter_kind", nullable = false },
    { name = "name", type = "text", nullable = false, remote_name = "label" },
    { name = "batch", type = "bigint", default = "nextval('meter_batch_seq')" },
]

[readings]
table = "meter_readings"
order_by = ["read_at", "id"]
dedupe_key = ["meter_id", "register_id", "read_at"]
columns = [
    { name = "meter_id", type = "integer", nullable = false },
    { name = "register_id", type = "integer", nullable = false },
    { name = "read_at", type = "timestamp", nullable = false, remote_name = "reading_time" },
    { name = "value", type = "numeric(12, 4)", nullable = false },
]
"#;
    let profile = meter_sync::profile::Profile::parse(text, "enum").unwrap();
    // Without a remote to read it from, the missing type is named.
    let mut client = env.local.client().await;
    let error = meter_sync::data::schema::migrate(&mut client, &profile)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(error, "type meter_kind (column meter_type) does not exist locally (and no remote database was given to read its definition from)");
    let types = meter_sync::data::schema::TypeSource {
        remote: &env.config.remote,
        pool: &env.config.pool,
    };
    let report = meter_sync::data::schema::migrate_with(&mut client, &profile, Some(types))
        .await
        .unwrap();
    for change in [
        "created type \"meter_kind\" as enum (electric, water, gas, heat) as the remote defines it",
        "created sequence \"meter_batch_seq\"",
        "created table \"meter\"",
        "added column \"meter_readings\".\"id\"",
        "created unique index \"meter_readings_id_key\"",
        "added column \"meter_readings\".\"is_synchronized\"",
        "created index \"meter_readings_sync_queue_idx\"",
    ] {
        assert!(
            report.changes.iter().any(|c| c == change),
            "{change:?} missing from {:#?}",
            report.changes
        );
    }
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    assert_eq!(
        rows_text(
            &local,
            "select id, is_synchronized from meter_readings order by id"
        )
        .await,
        ["(1,f)", "(2,f)"],
        "existing readings keep their data and join the queue"
    );
    let again = meter_sync::data::schema::migrate_with(&mut client, &profile, Some(types))
        .await
        .unwrap();
    assert!(again.changes.is_empty(), "{again:?}");
    // The enum now matches by name and labels: the download works, the defaults apply.
    let report = crate::support::download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(count(&local, "meter").await, 20);
    // A label the site lacks refuses the entity, naming the label.
    remote
        .batch_execute("alter type meter_kind add value 'steam'")
        .await
        .unwrap();
    remote
        .batch_execute("update meter set meter_type = 'steam' where id = 4")
        .await
        .unwrap();
    let report = crate::support::download(&env, &profile, Some("1"), &[]).await;
    let error = report.entity("meter").unwrap().error.clone().unwrap();
    assert!(
        error.contains("meter_type: remote meter_kind, local meter_kind (enum label \"steam\" is missing on the target)"),
        "{error}"
    );
    // Readings upload through the renamed column; a resend is a no-op.
    let report = crate::support::upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.uploaded, 2);
    assert_eq!(
        rows_text(
            &remote,
            "select meter_id, reading_time from meter_readings where quality is null order by 1"
        )
        .await,
        ["(1,\"2026-01-01 00:00:00\")", "(2,\"2026-01-01 00:00:00\")"]
    );
}

#[tokio::test]
async fn nullable_dedupe_columns_never_double_a_reading() {
    for (label, index) in [
        ("legacy_null_anti", ""),
        (
            "legacy_null_index",
            "create unique index readings_key on meter_readings (meter_id, meter_element_id, reading_time) nulls not distinct",
        ),
    ] {
        let Legacy { env, remote, .. } = Legacy::new(label, "").await;
        remote
            .batch_execute(&format!(
                "alter table meter_readings drop constraint meter_readings_pkey, alter column id drop not null; {index}"
            ))
            .await
            .unwrap();
        // Every batch compared: the resend below is the site queueing the readings again, which
        // only the anti-join (or the index) can recognise; the ledger's settling of uncertain
        // batches runs the same anti-join.
        let text = r#"
[readings]
table = "meter_readings"
order_by = ["read_at", "id"]
dedupe_key = ["meter_id", "meter_element_id", "read_at"]
resend_check = "every_batch"
columns = [
    { name = "meter_id", type = "integer", nullable = false },
    { name = "meter_element_id", type = "integer" },
    { name = "register_id", type = "integer", nullable = false },
    { name = "read_at", type = "timestamp", nullable = false, remote_name = "reading_time" },
    { name = "value", type = "numeric(12, 4)", nullable = false },
]
"#;
        let profile = meter_sync::profile::Profile::parse(text, "nullable").unwrap();
        crate::support::migrate_local(&env.local, &profile).await;
        let local = env.local.client().await;
        let insert = "insert into meter_readings (meter_id, meter_element_id, register_id, read_at, value)
            select 1 + n % 3, case when n % 2 = 0 then n end, 1, timestamp '2026-01-01' + (n / 3) * interval '1 minute', n
            from generate_series(1, 30) n";
        local.batch_execute(insert).await.unwrap();
        let report = crate::support::upload(&env, &profile).await;
        assert!(report.success(), "{report:#?}");
        assert_eq!(report.uploaded, 30, "{label}");
        // The same readings again (a resend after a lost local commit): nothing doubles.
        local.batch_execute(insert).await.unwrap();
        let report = crate::support::upload(&env, &profile).await;
        assert!(report.success(), "{report:#?}");
        assert_eq!((report.uploaded, report.deduplicated), (0, 30), "{label}: {report:#?}");
        assert_eq!(
            count(&remote, "meter_readings").await,
            5 + 30,
            "{label}"
        );
    }
}

/// Spec 004's local schema exactly as 004 writes it: what a site of the old process has.
const SPEC_004_SITE: &str = "
CREATE TABLE meter_readings (
  id SERIAL PRIMARY KEY,
  meter_id VARCHAR(255) NOT NULL,
  timestamp TIMESTAMP NOT NULL,
  value NUMERIC NOT NULL,
  unit VARCHAR(50) NOT NULL,
  metadata JSONB,
  is_synchronized BOOLEAN DEFAULT FALSE,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_meter_readings_sync ON meter_readings(is_synchronized, timestamp);
CREATE INDEX idx_meter_readings_meter_time ON meter_readings(meter_id, timestamp);
CREATE TABLE meters (
  meter_id VARCHAR(255) PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  location_id VARCHAR(255),
  meter_type VARCHAR(100) NOT NULL,
  unit VARCHAR(50) NOT NULL,
  configuration JSONB,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  synced_at TIMESTAMP
);
CREATE TABLE tenant (
  tenant_id VARCHAR(255) PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  configuration JSONB,
  metadata JSONB,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  synced_at TIMESTAMP
);
INSERT INTO tenant (tenant_id, name) VALUES ('tenant-1', 'Tenant 1');
INSERT INTO meter_readings (meter_id, timestamp, value, unit)
SELECT 'M-1-' || (1 + n % 5), timestamp '2026-01-01' + n * interval '1 minute', n / 8.0, 'kWh'
FROM generate_series(1, 30) n;
";

#[tokio::test]
async fn the_shipped_004_profile_runs_on_004s_own_schemas() {
    let env = TestEnv::new("legacy_004").await;
    crate::support::load_remote_fixture(
        &env.remote,
        meter_sync::fixture::Layout::Spec004,
        meter_sync::fixture::FixtureSize::default(),
    )
    .await;
    let local = env.local.client().await;
    let remote = env.remote.client().await;
    local.batch_execute(SPEC_004_SITE).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db-sync-process.toml");
    std::fs::write(&path, meter_sync::profile::DB_SYNC_PROCESS_PROFILE_TOML).unwrap();
    let vars = env.env(&[("SYNC_PROFILE", path.to_str().unwrap())]);
    let (code, out, err) = run(&vars, &["migrate"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("warning"), "{out}");
    let (code, out, err) = run(&vars, &["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let central_before = central_configuration(&remote).await;
    let (code, out, err) = run(&vars, &["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // 004's meters have no tenant: every meter is downloaded, as 004 says.
    assert_eq!(count(&local, "meters").await, 50);
    assert_eq!(
        rows_text(&local, "select tenant_id from tenant").await,
        ["(tenant-1)"]
    );
    // The SERIAL (int4) ids of the old process's queue: every reading once, by value.
    assert_eq!(count(&local, "meter_readings").await, 0);
    assert_eq!(
        rows_text(
            &remote,
            "select count(*), count(distinct (meter_id, timestamp, unit)), sum(value) = 465 / 8.0 from meter_readings"
        )
        .await,
        ["(30,30,t)"]
    );
    let (code, _, _) = run(&vars, &["once"]).await;
    assert_eq!(code, 0);
    assert_eq!(count(&remote, "meter_readings").await, 30);
    assert_eq!(central_configuration(&remote).await, central_before);
}
