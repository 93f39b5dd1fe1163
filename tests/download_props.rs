//! Property tests of the download engine against the real throwaway clusters: every
//! correctness property of spec documents 000 (1-7), 003 (1, 2, 3, 7) and 004 (8, 9, 13, 14,
//! 15). Each case writes a random remote and local state (overlapping, disjoint, other
//! tenants' rows, NULLs, unicode and quotes, JSON, composite keys), runs the engine and checks
//! the property. `PROPTEST_CASES` raises the case count.

use std::collections::{BTreeMap, BTreeSet};

use meter_sync::engine::download::DownloadReport;
use meter_sync::fixture::{FixtureSize, Layout};
use meter_sync::profile::{db_sync_process_tenant_scoped_toml, Profile};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::{
    database_checksum, download, load_remote_fixture, migrate_local, rows_text, TestEnv,
};

// ---------------------------------------------------------------- generators

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,12}",
        "\\PC{0,8}",
        Just("O'Brien \"quoted\" \\ back;--".to_string()),
        Just(String::new()),
    ]
}

fn json_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        (0i64..5).prop_map(|n| Some(json!({ "k": n }))),
        text().prop_map(|t| Some(json!([t, null, 1.5]))),
    ]
}

#[derive(Debug, Clone)]
struct Meter {
    tenant: i64,
    device_id: Option<i64>,
    name: String,
    port: Option<i32>,
    register_map: Option<Value>,
    notes: Option<String>,
    active: bool,
}

#[derive(Debug, Clone)]
struct Register {
    tenant: i64,
    name: String,
    register: i32,
    unit: Option<String>,
}

/// One side's configuration rows, keyed as the tables are.
#[derive(Debug, Clone)]
struct Side {
    tenants: BTreeMap<i64, (String, Option<Value>)>,
    meters: BTreeMap<(i64, i64), Meter>,
    registers: BTreeMap<i64, Register>,
    assocs: BTreeMap<(i64, i64), Option<i64>>,
}

fn side(local: bool) -> impl Strategy<Value = Side> {
    let meter = (
        1i64..=2,
        prop::option::of(100i64..106),
        text(),
        prop::option::of(1i32..3),
        json_value(),
        prop::option::of(text()),
        any::<bool>(),
    )
        .prop_map(
            |(tenant, device_id, name, port, register_map, notes, active)| Meter {
                tenant,
                device_id,
                name,
                port,
                register_map,
                notes,
                active,
            },
        );
    let register = (1i64..=2, text(), 1i32..4, prop::option::of(text())).prop_map(
        |(tenant, name, register, unit)| Register {
            tenant,
            name,
            register,
            unit,
        },
    );
    // A site's local tenant table only ever holds its own tenant (1); the remote has both.
    let tenants = if local {
        prop::collection::btree_map(Just(1i64), (text(), json_value()), 0..=1).boxed()
    } else {
        // The site's tenant is always known centrally (an unknown one is refused before any
        // write; its own test covers that).
        prop::collection::btree_map(1i64..=2, (text(), json_value()), 0..=2)
            .prop_map(|mut tenants| {
                tenants
                    .entry(1)
                    .or_insert_with(|| ("Site".to_string(), None));
                tenants
            })
            .boxed()
    };
    (
        tenants,
        prop::collection::btree_map((1i64..10, 1i64..3), meter, 0..12),
        prop::collection::btree_map(1i64..12, register, 0..10),
        prop::collection::btree_map((100i64..106, 1i64..12), prop::option::of(1i64..1000), 0..14),
    )
        .prop_map(|(tenants, meters, registers, assocs)| Side {
            tenants,
            meters,
            registers,
            assocs,
        })
}

fn scenario() -> impl Strategy<Value = (Side, Side)> {
    (side(false), side(true))
}

// ---------------------------------------------------------------- database plumbing

/// A runtime and a test environment shared by all cases of one property.
struct PropDb {
    rt: tokio::runtime::Runtime,
    env: TestEnv,
    profile: Profile,
    /// The PgBouncer the downloads go through, if any.
    _bouncer: Option<meter_sync::pgbouncer::PgBouncer>,
}

impl PropDb {
    fn new(label: &str, layout: Layout) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (env, profile) = rt.block_on(async {
            // Random remote states delete freely: the deletion semantics are under test here;
            // the mass-delete guard has tests of its own.
            let env = TestEnv::with_settings(label, &[("ALLOW_MASS_DELETE", "true")]).await;
            load_remote_fixture(&env.remote, layout, FixtureSize::default()).await;
            let profile = match layout {
                Layout::Default => Profile::builtin_default().unwrap(),
                Layout::DbSyncProcess => {
                    Profile::parse(&db_sync_process_tenant_scoped_toml(), "004").unwrap()
                }
                Layout::Spec004 => {
                    Profile::parse(meter_sync::profile::DB_SYNC_PROCESS_PROFILE_TOML, "004")
                        .unwrap()
                }
            };
            migrate_local(&env.local, &profile).await;
            (env, profile)
        });
        Self {
            rt,
            env,
            profile,
            _bouncer: None,
        }
    }

    /// [`PropDb::new`] with the downloads going through a PgBouncer in transaction mode with
    /// two server connections (the test's own statements reach the cluster directly).
    fn through_pgbouncer(label: &str, layout: Layout) -> Self {
        let mut db = Self::new(label, layout);
        let bouncer = meter_sync::pgbouncer::PgBouncer::start(
            db.env.remote.cluster.port(),
            meter_sync::pgbouncer::BouncerMode::Transaction,
            2,
        )
        .unwrap();
        db.env.config.remote.port = bouncer.port();
        db.env.config.remote.pool_mode = meter_sync::config::PoolMode::Transaction;
        db._bouncer = Some(bouncer);
        db
    }
}

/// Runs `case` for generated values; failures shrink like any proptest.
/// Runs `case` for generated values on this property's databases.
fn check<T: std::fmt::Debug>(
    db: &PropDb,
    strategy: impl Strategy<Value = T>,
    case: impl Fn(&PropDb, T),
) {
    crate::support::check_cases(strategy, |value| case(db, value));
}

async fn write_side(client: &Client, side: &Side, remote: bool) {
    client
        .batch_execute("truncate tenant, meter, register, device_register")
        .await
        .unwrap();
    if !remote {
        client.batch_execute("truncate sync_logs").await.unwrap();
    }
    for (id, (name, metadata)) in &side.tenants {
        client
            .execute(
                "insert into tenant (tenant_id, name, metadata) values ($1, $2, $3)",
                &[id, name, metadata],
            )
            .await
            .unwrap();
    }
    for ((id, element), m) in &side.meters {
        let values: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            id,
            element,
            &m.device_id,
            &m.name,
            &m.port,
            &m.register_map,
            &m.notes,
            &m.active,
            &m.tenant,
        ];
        let sql = if remote {
            "insert into meter (id, meter_element_id, device_id, name, port, register_map, notes, active, tenant_id) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        } else {
            "insert into meter (id, meter_element_id, device_id, name, port, register_map, notes, active) values ($1, $2, $3, $4, $5, $6, $7, $8)"
        };
        client
            .execute(sql, if remote { &values[..] } else { &values[..8] })
            .await
            .unwrap();
    }
    for (id, r) in &side.registers {
        let values: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [id, &r.name, &r.register, &r.unit, &r.tenant];
        let sql = if remote {
            "insert into register (id, name, register, unit, tenant_id) values ($1, $2, $3, $4, $5)"
        } else {
            "insert into register (id, name, register, unit) values ($1, $2, $3, $4)"
        };
        client
            .execute(sql, if remote { &values[..] } else { &values[..4] })
            .await
            .unwrap();
    }
    for ((device, register), id) in &side.assocs {
        client
            .execute(
                "insert into device_register (id, device_id, register_id) values ($1, $2, $3)",
                &[id, device, register],
            )
            .await
            .unwrap();
    }
}

/// Writes both sides, then runs one download for tenant 1.
async fn setup_and_download(db: &PropDb, remote: &Side, local: &Side) -> DownloadReport {
    write_side(&db.env.remote.client().await, remote, true).await;
    write_side(&db.env.local.client().await, local, false).await;
    download(&db.env, &db.profile, Some("1"), &[]).await
}

const ENTITY_QUERIES: [(&str, &str); 4] = [
    ("tenant", "select tenant_id::text as k, t::text as v from (select tenant_id, name, configuration, metadata, updated_at from tenant) t"),
    ("meter", "select id || '/' || meter_element_id as k, t::text as v from (select id, meter_element_id, device_id, name, type, serial_number, installation_date, location_id, ip, port, protocol, status, register_map, element, notes, active, created_at, updated_at from meter) t"),
    ("register", "select id::text as k, t::text as v from (select id, name, register, unit, field_name from register) t"),
    ("device_register", "select device_id || '/' || register_id as k, t::text as v from (select id, device_id, register_id, created_at, updated_at from device_register) t"),
];

/// Every local configuration table as key -> row text.
async fn local_state(client: &Client) -> BTreeMap<&'static str, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (entity, query) in ENTITY_QUERIES {
        let rows = client.query(query, &[]).await.unwrap();
        out.insert(entity, rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    out
}

/// What the remote says tenant 1's rows are, in the local tables' shape.
async fn remote_expected(client: &Client) -> BTreeMap<&'static str, BTreeMap<String, String>> {
    let filters = [
        ("tenant", "tenant_id = 1"),
        ("meter", "tenant_id = 1"),
        ("register", "tenant_id = 1"),
        (
            "device_register",
            "register_id in (select id from register where tenant_id = 1)",
        ),
    ];
    let mut out = BTreeMap::new();
    for ((entity, query), (_, filter)) in ENTITY_QUERIES.iter().zip(filters) {
        let sql = query.replacen(
            &format!(" from {entity})"),
            &format!(" from {entity} where {filter})"),
            1,
        );
        let rows = client.query(&sql, &[]).await.unwrap();
        out.insert(
            *entity,
            rows.iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect::<BTreeMap<String, String>>(),
        );
    }
    out
}

fn keys(map: &BTreeMap<String, String>) -> BTreeSet<&String> {
    map.keys().collect()
}

// ---------------------------------------------------------------- spec 000

// Spec 000, Property 1: register sync idempotence — running the sync twice leaves the same
// state as running it once, and the second run changes nothing.
#[test]
fn prop_000_1_sync_is_idempotent() {
    sync_is_idempotent(&PropDb::new("p000_1", Layout::Default));
}

// The same through PgBouncer in transaction mode (issue 16).
#[test]
fn prop_000_1_sync_is_idempotent_through_pgbouncer() {
    sync_is_idempotent(&PropDb::through_pgbouncer("p000_1_pool", Layout::Default));
}

fn sync_is_idempotent(db: &PropDb) {
    check(db, scenario(), |db, (remote, local)| {
        db.rt.block_on(async {
            let first = setup_and_download(db, &remote, &local).await;
            assert!(first.success(), "{first:#?}");
            let client = db.env.local.client().await;
            let once = local_state(&client).await;
            let second = download(&db.env, &db.profile, Some("1"), &[]).await;
            for e in &second.entities {
                assert_eq!((e.inserted, e.updated, e.deleted), (0, 0, 0), "{e:#?}");
            }
            assert_eq!(local_state(&client).await, once);
        })
    });
}

// Spec 000, Property 2: device register referential integrity — every local device_register
// row's device and register exist locally.
#[test]
fn prop_000_2_associations_always_reference_existing_rows() {
    let db = PropDb::new("p000_2", Layout::Default);
    check(&db, scenario(), |db, (remote, local)| {
        db.rt.block_on(async {
            assert!(setup_and_download(db, &remote, &local).await.success());
            let dangling = rows_text(
                &db.env.local.client().await,
                "select device_id, register_id from device_register d
                 where not exists (select 1 from meter m where m.device_id = d.device_id)
                    or not exists (select 1 from register r where r.id = d.register_id)",
            )
            .await;
            assert!(dangling.is_empty(), "{dangling:?}");
        })
    });
}

// Spec 000, Property 3: register deletion consistency, and Property 4: device register
// deletion consistency — local rows absent remotely are deleted.
#[test]
fn prop_000_3_4_rows_gone_remotely_are_deleted() {
    rows_gone_remotely_are_deleted(&PropDb::new("p000_34", Layout::Default));
}

// The same through PgBouncer in transaction mode (issue 16).
#[test]
fn prop_000_3_4_rows_gone_remotely_are_deleted_through_pgbouncer() {
    rows_gone_remotely_are_deleted(&PropDb::through_pgbouncer("p000_34_pool", Layout::Default));
}

fn rows_gone_remotely_are_deleted(db: &PropDb) {
    check(db, scenario(), |db, (remote, local)| {
        db.rt.block_on(async {
            let report = setup_and_download(db, &remote, &local).await;
            assert!(report.success());
            let expected = remote_expected(&db.env.remote.client().await).await;
            let after = local_state(&db.env.local.client().await).await;
            for entity in ["register", "device_register"] {
                let extra: Vec<&String> = after[entity]
                    .keys()
                    .filter(|k| !expected[entity].contains_key(*k))
                    .collect();
                assert!(extra.is_empty(), "{entity}: {extra:?} survived");
            }
        })
    });
}

// Spec 000, Property 5: sync result accuracy — the reported counts equal the actual change of
// each local table.
#[test]
fn prop_000_5_counts_match_the_actual_table_diff() {
    let db = PropDb::new("p000_5", Layout::Default);
    check(&db, scenario(), |db, (remote, local)| {
        db.rt.block_on(async {
            write_side(&db.env.remote.client().await, &remote, true).await;
            let client = db.env.local.client().await;
            write_side(&client, &local, false).await;
            let before = local_state(&client).await;
            let report = download(&db.env, &db.profile, Some("1"), &[]).await;
            assert!(report.success(), "{report:#?}");
            let after = local_state(&client).await;
            let expected = remote_expected(&db.env.remote.client().await).await;
            for (entity, _) in ENTITY_QUERIES {
                let (b, a, remote_keys) =
                    (&before[entity], &after[entity], keys(&expected[entity]));
                let inserted = a.keys().filter(|k| !b.contains_key(*k)).count() as u64;
                let removed = b.keys().filter(|k| !a.contains_key(*k)).count() as u64;
                let changed_in_remote = a
                    .iter()
                    .filter(|(k, v)| {
                        b.get(*k).is_some_and(|old| old != *v) && remote_keys.contains(k)
                    })
                    .count() as u64;
                let changed_missing = a
                    .iter()
                    .filter(|(k, v)| {
                        b.get(*k).is_some_and(|old| old != *v) && !remote_keys.contains(k)
                    })
                    .count() as u64;
                let e = report.entity(entity).unwrap();
                assert_eq!(e.inserted, inserted, "{entity} inserted");
                assert_eq!(e.updated, changed_in_remote, "{entity} updated");
                assert_eq!(
                    e.deleted,
                    removed + changed_missing,
                    "{entity} deleted or deactivated"
                );
            }
        })
    });
}

// Spec 000, Property 6: tenant isolation — only the tenant's registers (and meters) reach the
// local database; other tenants' rows never do.
#[test]
fn prop_000_6_only_the_tenants_rows_arrive() {
    only_the_tenants_rows_arrive(&PropDb::new("p000_6", Layout::Default));
}

// The same through PgBouncer in transaction mode (issue 16).
#[test]
fn prop_000_6_only_the_tenants_rows_arrive_through_pgbouncer() {
    only_the_tenants_rows_arrive(&PropDb::through_pgbouncer("p000_6_pool", Layout::Default));
}

fn only_the_tenants_rows_arrive(db: &PropDb) {
    check(db, scenario(), |db, (remote, local)| {
        db.rt.block_on(async {
            assert!(setup_and_download(db, &remote, &local).await.success());
            let client = db.env.local.client().await;
            let registers: BTreeSet<i64> = client
                .query("select id from register", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let tenant_registers: BTreeSet<i64> = remote
                .registers
                .iter()
                .filter(|(_, r)| r.tenant == 1)
                .map(|(id, _)| *id)
                .collect();
            assert!(
                registers.is_subset(&tenant_registers),
                "{registers:?} vs {tenant_registers:?}"
            );
            let active: BTreeSet<(i64, i64)> = client
                .query("select id, meter_element_id from meter where active", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for key in &active {
                assert_eq!(
                    remote.meters.get(key).map(|m| m.tenant),
                    Some(1),
                    "active meter {key:?} is not tenant 1's"
                );
            }
            let tenants = rows_text(&client, "select tenant_id from tenant").await;
            assert!(tenants.iter().all(|t| t == "(1)"), "{tenants:?}");
        })
    });
}

// Spec 000, Property 7: no remote database modification — every remote table's content is
// the same before and after.
#[test]
fn prop_000_7_remote_is_never_modified() {
    remote_is_never_modified(&PropDb::new("p000_7", Layout::Default));
}

// The same through PgBouncer in transaction mode (issue 16).
#[test]
fn prop_000_7_remote_is_never_modified_through_pgbouncer() {
    remote_is_never_modified(&PropDb::through_pgbouncer("p000_7_pool", Layout::Default));
}

fn remote_is_never_modified(db: &PropDb) {
    check(db, scenario(), |db, (remote, local)| {
        db.rt.block_on(async {
            let client = db.env.remote.client().await;
            write_side(&client, &remote, true).await;
            write_side(&db.env.local.client().await, &local, false).await;
            let before = database_checksum(&client).await;
            assert!(download(&db.env, &db.profile, Some("1"), &[])
                .await
                .success());
            assert_eq!(database_checksum(&client).await, before);
        })
    });
}

// ---------------------------------------------------------------- spec 003

// Spec 003, Property 1: new meters are inserted with every field equal to the remote's;
// Property 2: existing meters are updated to the remote's values; Property 3: meters missing
// remotely are deactivated (active = false); Property 7: the meter count equals the number of
// active local meters.
#[test]
fn prop_003_1_2_3_7_meters_inserted_updated_deactivated_and_counted() {
    let db = PropDb::new("p003", Layout::Default);
    check(&db, scenario(), |db, (remote, local)| {
        db.rt.block_on(async {
            assert!(setup_and_download(db, &remote, &local).await.success());
            let client = db.env.local.client().await;
            let after = local_state(&client).await;
            let expected = remote_expected(&db.env.remote.client().await).await;
            for (key, row) in &expected["meter"] {
                assert_eq!(
                    after["meter"].get(key),
                    Some(row),
                    "meter {key} differs from the remote"
                );
            }
            for (id, element) in local.meters.keys() {
                let key = format!("{id}/{element}");
                if !expected["meter"].contains_key(&key) {
                    let active: bool = client
                        .query_one(
                            "select active from meter where id = $1 and meter_element_id = $2",
                            &[id, element],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    assert!(!active, "meter {key} missing remotely is still active");
                }
            }
            let active: i64 = client
                .query_one("select count(*) from meter where active", &[])
                .await
                .unwrap()
                .get(0);
            let counted = meter_sync::service::status::meter_count(&client, &db.profile)
                .await
                .unwrap();
            assert_eq!(counted, Some(active));
        })
    });
}

// ---------------------------------------------------------------- spec 004

#[derive(Debug, Clone)]
struct ProcessSide {
    tenants: BTreeMap<String, (String, Option<Value>, Option<Value>)>,
    meters: BTreeMap<String, (String, String, String, Option<Value>)>,
}

fn process_side(local: bool) -> impl Strategy<Value = (ProcessSide, BTreeMap<String, String>)> {
    let tenant_ids = if local {
        Just(vec!["tenant-1".to_string()]).boxed()
    } else {
        Just(vec!["tenant-1".to_string(), "tenant-2".to_string()]).boxed()
    };
    (
        tenant_ids.prop_flat_map(move |ids| {
            prop::collection::btree_map(
                prop::sample::select(ids),
                (text(), json_value(), json_value()),
                0..=2,
            )
            .prop_map(move |mut tenants| {
                // The site's tenant is always known centrally.
                if !local {
                    tenants
                        .entry("tenant-1".to_string())
                        .or_insert_with(|| ("Site".to_string(), None, None));
                }
                tenants
            })
        }),
        prop::collection::btree_map(
            "M-[0-9]{1,2}",
            (
                (text(), "[a-z]{1,6}", "kWh|m3|MWh"),
                json_value(),
                prop_oneof![Just("tenant-1".to_string()), Just("tenant-2".to_string())],
            ),
            0..12,
        ),
    )
        .prop_map(|(tenants, meters)| {
            let owners = meters
                .iter()
                .map(|(k, (_, _, t))| (k.clone(), t.clone()))
                .collect();
            let meters = meters
                .into_iter()
                .map(|(k, ((name, ty, unit), config, _))| (k, (name, ty, unit, config)))
                .collect();
            (ProcessSide { tenants, meters }, owners)
        })
}

async fn write_process_side(
    client: &Client,
    side: &ProcessSide,
    owners: &BTreeMap<String, String>,
    remote: bool,
) {
    client
        .batch_execute("truncate tenant, meters")
        .await
        .unwrap();
    for (id, (name, configuration, metadata)) in &side.tenants {
        client
            .execute("insert into tenant (tenant_id, name, configuration, metadata, updated_at) values ($1, $2, $3, $4, '2026-01-01')", &[id, name, configuration, metadata])
            .await
            .unwrap();
    }
    for (id, (name, ty, unit, configuration)) in &side.meters {
        if remote {
            client
                .execute(
                    "insert into meters (meter_id, tenant_id, name, meter_type, unit, configuration, updated_at) values ($1, $2, $3, $4, $5, $6, '2026-01-01')",
                    &[id, &owners[id], name, ty, unit, configuration],
                )
                .await
                .unwrap();
        } else {
            client
                .execute("insert into meters (meter_id, name, meter_type, unit, configuration, updated_at) values ($1, $2, $3, $4, $5, '2026-01-01')", &[id, name, ty, unit, configuration])
                .await
                .unwrap();
        }
    }
}

const PROCESS_METERS: &str = "select meter_id as k, t::text as v from (select meter_id, name, location_id, meter_type, unit, configuration, updated_at from meters %) t";
const PROCESS_TENANT: &str = "select tenant_id as k, t::text as v from (select tenant_id, name, configuration, metadata, updated_at from tenant %) t";

async fn keyed(client: &Client, template: &str, filter: &str) -> BTreeMap<String, String> {
    client
        .query(&template.replace('%', filter), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

// Spec 004, Property 8: meter configuration upsert correctness — each remote meter of the
// tenant is inserted if new and updated if different; Property 9: new meter detection — each
// inserted meter is reported (and logged) with its id and name and counted; Property 13:
// tenant upsert correctness; Property 14: tenant change tracking — an updated tenant is
// reported with exactly the fields that changed.
#[test]
fn prop_004_8_9_13_14_upserts_are_correct_and_reported() {
    let db = PropDb::new("p004", Layout::DbSyncProcess);
    check(
        &db,
        (process_side(false), process_side(true)),
        |db, ((remote, owners), (local, _))| {
            db.rt.block_on(async {
                let rclient = db.env.remote.client().await;
                let lclient = db.env.local.client().await;
                write_process_side(&rclient, &remote, &owners, true).await;
                write_process_side(&lclient, &local, &BTreeMap::new(), false).await;
                let before_meters = keyed(&lclient, PROCESS_METERS, "").await;
                let before_tenant = keyed(&lclient, PROCESS_TENANT, "").await;
                let report = download(&db.env, &db.profile, Some("tenant-1"), &[]).await;
                assert!(report.success(), "{report:#?}");
                let expected_meters =
                    keyed(&rclient, PROCESS_METERS, "where tenant_id = 'tenant-1'").await;
                let after_meters = keyed(&lclient, PROCESS_METERS, "").await;
                for (k, v) in &expected_meters {
                    assert_eq!(after_meters.get(k), Some(v), "P8: meter {k}");
                }
                let meters = report.entity("meters").unwrap();
                let new: BTreeSet<&String> = expected_meters
                    .keys()
                    .filter(|k| !before_meters.contains_key(*k))
                    .collect();
                assert_eq!(meters.inserted as usize, new.len(), "P9: new meter count");
                let reported: BTreeSet<&String> =
                    meters.new_rows.iter().map(|r| &r.key[0]).collect();
                assert_eq!(reported, new, "P9: new meter ids");
                for row in &meters.new_rows {
                    assert_eq!(
                        row.name.as_ref(),
                        Some(&remote.meters[&row.key[0]].0),
                        "P9: new meter name"
                    );
                }
                // Tenants: upserted, and changes tracked field by field.
                let expected_tenant =
                    keyed(&rclient, PROCESS_TENANT, "where tenant_id = 'tenant-1'").await;
                let after_tenant = keyed(&lclient, PROCESS_TENANT, "").await;
                for (k, v) in &expected_tenant {
                    assert_eq!(after_tenant.get(k), Some(v), "P13: tenant {k}");
                }
                let tenant = report.entity("tenant").unwrap();
                if let (Some(old), Some(new)) = (
                    local.tenants.get("tenant-1"),
                    remote.tenants.get("tenant-1"),
                ) {
                    if before_tenant.contains_key("tenant-1") {
                        let mut fields = Vec::new();
                        if old.0 != new.0 {
                            fields.push("name");
                        }
                        if old.1 != new.1 {
                            fields.push("configuration");
                        }
                        if old.2 != new.2 {
                            fields.push("metadata");
                        }
                        let reported: Vec<&str> = tenant
                            .changed_rows
                            .iter()
                            .flat_map(|c| c.columns.iter().map(String::as_str))
                            .collect();
                        assert_eq!(reported, fields, "P14: changed fields");
                    }
                }
            })
        },
    );
}

// Spec 004, Property 15: download failure isolation (and Property 10 for the download side) —
// when one entity's download fails, the others are still applied correctly.
#[test]
fn prop_004_15_one_failing_entity_does_not_block_the_others() {
    let db = PropDb::new("p004_15", Layout::DbSyncProcess);
    let strategy = (process_side(false), any::<bool>());
    check(&db, strategy, |db, ((remote, owners), break_tenant)| {
        db.rt.block_on(async {
            let rclient = db.env.remote.client().await;
            let lclient = db.env.local.client().await;
            write_process_side(&rclient, &remote, &owners, true).await;
            write_process_side(
                &lclient,
                &ProcessSide {
                    tenants: BTreeMap::new(),
                    meters: BTreeMap::new(),
                },
                &BTreeMap::new(),
                false,
            )
            .await;
            let (broken, healthy, template) = if break_tenant {
                ("tenant", "meters", PROCESS_METERS)
            } else {
                ("meters", "tenant", PROCESS_TENANT)
            };
            rclient
                .batch_execute(&format!("alter table {broken} rename column name to label"))
                .await
                .unwrap();
            let report = download(&db.env, &db.profile, Some("tenant-1"), &[]).await;
            rclient
                .batch_execute(&format!("alter table {broken} rename column label to name"))
                .await
                .unwrap();
            assert!(report.entity(broken).unwrap().error.is_some());
            assert!(report.entity(healthy).unwrap().success, "{report:#?}");
            let filter = "where tenant_id = 'tenant-1'";
            assert_eq!(
                keyed(&lclient, template, "").await,
                keyed(&rclient, template, filter).await
            );
        })
    });
}
