//! Property tests of the upload engine against the real clusters: spec document 004,
//! properties 1-5, with random readings (NULL metadata, unicode, extreme and NaN numerics,
//! duplicate timestamps across meters). `PROPTEST_CASES` raises the case count.

use std::collections::BTreeMap;

use meter_sync::profile::Profile;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::{count, rows_text, upload_env, TestEnv, READINGS_MULTISET};

/// A reading: (meter, minute) identify it with the unit; the value is numeric text.
type Readings = BTreeMap<(u8, u16, &'static str), (String, Option<Value>)>;

fn readings(max: usize) -> impl Strategy<Value = Readings> {
    let value = prop_oneof![
        (-1_000_000i64..1_000_000).prop_map(|v| v.to_string()),
        (any::<i32>(), 0u32..1_000_000).prop_map(|(a, b)| format!("{a}.{b:06}")),
        Just("123456789012345678901234567890.123456789".to_string()),
        Just("-0.000000000000000001".to_string()),
        Just("NaN".to_string()),
        Just("0".to_string()),
    ];
    let metadata = prop_oneof![
        Just(None),
        "\\PC{0,10}".prop_map(|t| Some(json!({ "note": t }))),
        (0u8..5).prop_map(|q| Some(json!({ "quality": q, "flags": [q, null] }))),
    ];
    prop::collection::btree_map(
        (0u8..6, 0u16..40, prop::sample::select(vec!["kWh", "kW"])),
        (value, metadata),
        0..max,
    )
}

struct PropDb {
    rt: tokio::runtime::Runtime,
    env: TestEnv,
    profile: Profile,
}

impl PropDb {
    fn new(label: &str, extra: &[(&str, &str)]) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (env, profile) = rt.block_on(upload_env(label, extra));
        Self { rt, env, profile }
    }
}

/// Runs `case` for generated values on this property's databases.
fn check<T: std::fmt::Debug>(
    db: &PropDb,
    strategy: impl Strategy<Value = T>,
    case: impl Fn(&PropDb, T),
) {
    crate::support::check_cases(strategy, |value| case(db, value));
}

/// Empties both sides and queues the readings locally in a random order of ids.
async fn reset(db: &PropDb, readings: &Readings) -> Client {
    let remote = db.env.remote.client().await;
    remote
        .batch_execute(
            "truncate meter_readings; drop trigger if exists fail_some on meter_readings",
        )
        .await
        .unwrap();
    let local = db.env.local.client().await;
    local
        .batch_execute("truncate meter_readings, sync_logs")
        .await
        .unwrap();
    for ((meter, minute, unit), (value, metadata)) in readings.iter().rev() {
        local
            .execute(
                "insert into meter_readings (meter_id, timestamp, value, unit, metadata)
                 values ($1, timestamp '2026-01-01' + $2 * interval '1 minute', $3::text::numeric, $4, $5)",
                &[&format!("M-{meter}"), &f64::from(*minute), value, unit, metadata],
            )
            .await
            .unwrap();
    }
    local
}

const ORDERED: &str =
    "select meter_id, timestamp, value, unit, metadata from meter_readings order by timestamp, id";

// Spec 004, Property 1: batch size limit enforcement — one batch takes at most BATCH_SIZE
// readings, the oldest by timestamp (then id).
#[test]
fn prop_004_1_a_batch_takes_at_most_batch_size_oldest_first() {
    let db = PropDb::new("u004_1", &[]);
    check(&db, (readings(60), 1u32..40), |db, (readings, batch)| {
        db.rt.block_on(async {
            let local = reset(db, &readings).await;
            let expected: Vec<String> = rows_text(&local, ORDERED)
                .await
                .into_iter()
                .take(batch as usize)
                .collect();
            let mut config = db.env.config.clone();
            config.batch_size = batch;
            config.max_batches_per_run = 1;
            let spec = db.profile.readings.as_ref().unwrap();
            let report = meter_sync::service::cycle::upload(
                &crate::support::pools(&db.env),
                meter_sync::service::cycle::upload_request(&config, &db.profile, spec),
            )
            .await;
            assert!(report.success(), "{report:#?}");
            assert_eq!(report.uploaded as usize, expected.len());
            let remote = db.env.remote.client().await;
            let mut sent = rows_text(&remote, ORDERED).await;
            let mut want = expected.clone();
            sent.sort();
            want.sort();
            assert_eq!(sent, want);
        })
    });
}

// Spec 004, Property 2: upload-delete atomicity — the readings the remote committed are
// exactly the ones deleted locally; together they are the original readings.
#[test]
fn prop_004_2_uploaded_readings_are_exactly_the_deleted_ones() {
    let db = PropDb::new("u004_2", &[]);
    check(
        &db,
        (readings(80), 1u32..30, 1u32..5),
        |db, (readings, batch, batches)| {
            db.rt.block_on(async {
                let local = reset(db, &readings).await;
                let original = rows_text(&local, READINGS_MULTISET).await;
                let mut config = db.env.config.clone();
                config.batch_size = batch;
                config.max_batches_per_run = batches;
                let spec = db.profile.readings.as_ref().unwrap();
                let report = meter_sync::service::cycle::upload(
                    &crate::support::pools(&db.env),
                    meter_sync::service::cycle::upload_request(&config, &db.profile, spec),
                )
                .await;
                assert!(report.success());
                let remote = db.env.remote.client().await;
                let mut together = rows_text(&remote, READINGS_MULTISET).await;
                assert_eq!(together.len() as u64, report.removed);
                together.extend(rows_text(&local, READINGS_MULTISET).await);
                together.sort();
                let mut original = original;
                original.sort();
                assert_eq!(together, original);
            })
        },
    );
}

// Spec 004, Property 3: transaction atomicity — a batch that fails part-way leaves no partial
// change: the remote holds whole batches only, and every reading it lacks is still queued.
#[test]
fn prop_004_3_a_failing_batch_changes_nothing() {
    let db = PropDb::new("u004_3", &[("MAX_QUERY_RETRIES", "0")]);
    check(
        &db,
        (readings(80), 1u32..25, 0u8..6),
        |db, (readings, batch, poison_meter)| {
            db.rt.block_on(async {
            let local = reset(db, &readings).await;
            let original = rows_text(&local, READINGS_MULTISET).await;
            let remote = db.env.remote.client().await;
            // A server-side failure (not a data error): the statement inserting the meter's
            // readings fails, after other rows of the batch were written.
            remote
                .batch_execute(&format!(
                    "create or replace function fail_some() returns trigger language plpgsql as $$
                     begin if new.meter_id = 'M-{poison_meter}' then raise exception 'injected failure'; end if; return new; end $$;
                     create trigger fail_some before insert on meter_readings for each row execute function fail_some();"
                ))
                .await
                .unwrap();
            let mut config = db.env.config.clone();
            config.batch_size = batch;
            config.upload_workers = Some(1);
            let spec = db.profile.readings.as_ref().unwrap();
            let report = meter_sync::service::cycle::upload(&crate::support::pools(&db.env), meter_sync::service::cycle::upload_request(&config, &db.profile, spec)).await;
            let on_remote = rows_text(&remote, READINGS_MULTISET).await;
            assert_eq!(on_remote.len() as u64, report.uploaded);
            if report.error.is_some() {
                assert_eq!(on_remote.len() % batch as usize, 0, "only the whole batches before the failing one");
            } else {
                assert_eq!(on_remote.len(), original.len(), "no failure: everything arrived");
            }
            let mut together = on_remote.clone();
            together.extend(rows_text(&local, READINGS_MULTISET).await);
            together.sort();
            let mut original = original;
            original.sort();
            assert_eq!(together, original, "nothing lost, nothing doubled");
            let marked: i64 = local.query_one("select count(*) from meter_readings where is_synchronized", &[]).await.unwrap().get(0);
            assert_eq!(marked, 0);
            if readings.keys().any(|(m, _, _)| *m == poison_meter) {
                assert!(report.error.as_deref().unwrap_or("").contains("injected failure"), "{report:#?}");
            }
        })
        },
    );
}

// Spec 004, Property 4: data preservation on failure — when the upload fails (the remote
// unreachable), every reading stays local with is_synchronized = false.
#[test]
fn prop_004_4_readings_stay_queued_when_the_remote_is_unreachable() {
    let db = PropDb::new("u004_4", &[("MAX_CONNECTION_RETRIES", "1")]);
    check(&db, readings(60), |db, readings| {
        db.rt.block_on(async {
            let local = reset(db, &readings).await;
            let original = rows_text(&local, READINGS_MULTISET).await;
            let mut config = db.env.config.clone();
            config.remote.port = meter_sync::pgcluster::free_port().unwrap();
            let pools = meter_sync::data::pg::Pools::new(&config).unwrap();
            let spec = db.profile.readings.as_ref().unwrap();
            let report = meter_sync::service::cycle::upload(
                &pools,
                meter_sync::service::cycle::upload_request(&config, &db.profile, spec),
            )
            .await;
            if !readings.is_empty() {
                assert!(!report.success());
                assert!(
                    report.error.as_deref().unwrap().contains("remote database"),
                    "{report:#?}"
                );
            }
            assert_eq!(rows_text(&local, READINGS_MULTISET).await, original);
            let marked: i64 = local
                .query_one(
                    "select count(*) from meter_readings where is_synchronized",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(marked, 0);
            assert_eq!(
                count(&db.env.remote.client().await, "meter_readings").await,
                0
            );
        })
    });
}

// Spec 004, Property 5: retry with exponential backoff — a retryable failure (here a
// serialization failure, SQLSTATE 40001, on the first `failures` attempts) is retried up to
// MAX_QUERY_RETRIES times, each after a wait within base * 2^n (full jitter: the waits' bounds
// are checked in `data::pg::backoff`); within the limit the upload succeeds, beyond it the
// readings stay queued.
#[test]
fn prop_004_5_retryable_failures_retry_with_exponential_backoff() {
    let db = PropDb::new("u004_5", &[("RETRY_BASE_SECONDS", "0.02")]);
    check(&db, (1u32..4, 0u32..4), |db, (failures, retries)| {
        db.rt.block_on(async {
            let mut readings = Readings::new();
            readings.insert((1, 1, "kWh"), ("1.5".into(), None));
            let local = reset(db, &readings).await;
            let remote = db.env.remote.client().await;
            remote
                .batch_execute(&format!(
                    "drop sequence if exists fail_seq; create sequence fail_seq;
                     create or replace function fail_some() returns trigger language plpgsql as $$
                     begin if nextval('fail_seq') <= {failures} then raise exception 'busy' using errcode = '40001'; end if; return new; end $$;
                     create trigger fail_some before insert on meter_readings for each row execute function fail_some();"
                ))
                .await
                .unwrap();
            let mut config = db.env.config.clone();
            config.retry.max_query_retries = retries;
            // One batch in flight, so the waits add up in sequence.
            config.upload_workers = Some(1);
            let spec = db.profile.readings.as_ref().unwrap();
            let report = meter_sync::service::cycle::upload(&crate::support::pools(&db.env), meter_sync::service::cycle::upload_request(&config, &db.profile, spec)).await;
            let attempts: i64 = remote
                .query_one("select last_value from fail_seq", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(attempts, i64::from(failures.min(retries)) + 1, "one try and a retry per retryable failure, up to the limit");
            if failures <= retries {
                assert!(report.success(), "{report:#?}");
                assert_eq!(report.uploaded, 1);
            } else {
                assert!(!report.success());
                assert_eq!(count(&local, "meter_readings").await, 1, "still queued");
            }
        })
    });
}
