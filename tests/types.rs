//! The type rule against real clusters: for pairs of (remote type, local type) drawn from a list
//! of column types with modifiers, and random values that fit the source type, a download or an
//! upload either delivers every value unchanged or is refused before anything moves. Never a
//! third outcome (a value rounded, truncated, padded or shifted through a time zone; a value
//! refused half way). With `convert = "checked"` one more outcome is allowed, value by value: a
//! value the target cannot hold fails its entity (download) or quarantines its reading, which
//! stays queued unchanged (upload); every other value still arrives unchanged.

use proptest::collection::vec;
use proptest::prelude::*;

use meter_sync::profile::Profile;

use crate::support::{check_cases_with, count, migrate_local, rows_text, TestEnv};

/// The types of the property: integers, numerics with and without modifiers, floats, character
/// types with lengths, times with precisions, and arrays.
const TYPES: &[&str] = &[
    "int2",
    "int4",
    "int8",
    "numeric(6, 2)",
    "numeric(18, 4)",
    "numeric(10, 0)",
    "numeric",
    "float4",
    "float8",
    "varchar(10)",
    "varchar(40)",
    "text",
    "char(5)",
    "char(8)",
    "timestamp",
    "timestamp(3)",
    "timestamptz",
    "timestamptz(0)",
    "date",
    "boolean",
    "int4[]",
    "int8[]",
    "numeric(6, 2)[]",
    "text[]",
    "numeric(18, 4)[]",
];

/// Indexes of related types (where most accepted pairs lie), so cases reach them often.
const FAMILIES: &[&[usize]] = &[
    &[0, 1, 2, 3, 4, 5, 6, 7, 8],
    &[9, 10, 11, 12, 13],
    &[14, 15, 16, 17],
    &[18],
    &[19],
    &[20, 21, 22, 23, 24],
];

/// `n / 10^scale` written exactly.
fn decimal(n: i64, scale: u32) -> String {
    if scale == 0 {
        return n.to_string();
    }
    let sign = if n < 0 { "-" } else { "" };
    let digits = format!("{:0>width$}", n.unsigned_abs(), width = scale as usize + 1);
    let (int, frac) = digits.split_at(digits.len() - scale as usize);
    format!("{sign}{int}.{frac}")
}

fn timestamp(micros: i64, digits: usize, zone: bool) -> String {
    let at = chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .naive_utc();
    let text = match digits {
        0 => at.format("%Y-%m-%d %H:%M:%S").to_string(),
        3 => at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        _ => at.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
    };
    if zone {
        text + "+00"
    } else {
        text
    }
}

/// 1970 to 2100, in microseconds.
const TIME_RANGE: std::ops::Range<i64> = 0..4_102_444_800_000_000;

/// A value that fits type `TYPES[i]`, as PostgreSQL reads it from text.
fn value(i: usize) -> BoxedStrategy<String> {
    let array = |element: BoxedStrategy<String>| {
        vec(element, 0..4)
            .prop_map(|items| format!("{{{}}}", items.join(",")))
            .boxed()
    };
    match TYPES[i] {
        "int2" => any::<i16>().prop_map(|n| n.to_string()).boxed(),
        "int4" => any::<i32>().prop_map(|n| n.to_string()).boxed(),
        "int8" => any::<i64>().prop_map(|n| n.to_string()).boxed(),
        "numeric(6, 2)" => (-999_999i64..=999_999).prop_map(|n| decimal(n, 2)).boxed(),
        "numeric(18, 4)" => (-(10i64.pow(18) - 1)..10i64.pow(18))
            .prop_map(|n| decimal(n, 4))
            .boxed(),
        "numeric(10, 0)" => (-(10i64.pow(10) - 1)..10i64.pow(10))
            .prop_map(|n| n.to_string())
            .boxed(),
        "numeric" => (any::<i64>(), 0u32..12)
            .prop_map(|(n, s)| decimal(n, s))
            .boxed(),
        "float4" => any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}"))
            .boxed(),
        "float8" => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}"))
            .boxed(),
        "varchar(10)" => "[a-zA-Z0-9 é]{0,10}".boxed(),
        "varchar(40)" => "[a-zA-Z0-9 é]{0,40}".boxed(),
        "text" => "[a-zA-Z0-9 é'\\\\]{0,60}".boxed(),
        "char(5)" => "[a-z ]{0,5}".boxed(),
        "char(8)" => "[a-z ]{0,8}".boxed(),
        "timestamp" => TIME_RANGE.prop_map(|m| timestamp(m, 6, false)).boxed(),
        "timestamp(3)" => TIME_RANGE
            .prop_map(|m| timestamp(m / 1000 * 1000, 3, false))
            .boxed(),
        "timestamptz" => TIME_RANGE.prop_map(|m| timestamp(m, 6, true)).boxed(),
        "timestamptz(0)" => TIME_RANGE
            .prop_map(|m| timestamp(m / 1_000_000 * 1_000_000, 0, true))
            .boxed(),
        "date" => (0i64..73_000)
            .prop_map(|d| timestamp(d * 86_400_000_000, 6, false)[..10].to_string())
            .boxed(),
        "boolean" => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        "int4[]" => array(any::<i32>().prop_map(|n| n.to_string()).boxed()),
        "int8[]" => array(any::<i64>().prop_map(|n| n.to_string()).boxed()),
        "numeric(6, 2)[]" => array((-999_999i64..=999_999).prop_map(|n| decimal(n, 2)).boxed()),
        "numeric(18, 4)[]" => array(
            (-(10i64.pow(18) - 1)..10i64.pow(18))
                .prop_map(|n| decimal(n, 4))
                .boxed(),
        ),
        "text[]" => array("[a-z]{0,5}".prop_map(|s| format!("\"{s}\"")).boxed()),
        other => unreachable!("no values for {other}"),
    }
}

/// One case: source and target types, whether the profile declares `time_zone = "UTC"`, and
/// the source values (NULL among them).
#[derive(Debug, Clone)]
struct Case {
    source: usize,
    target: usize,
    zone: bool,
    /// The column is `convert = "checked"`.
    checked: bool,
    values: Vec<Option<String>>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        0..TYPES.len(),
        any::<bool>(),
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_flat_map(|(source, related, zone, pick, checked)| {
            let target = if related {
                let family = FAMILIES.iter().find(|f| f.contains(&source)).unwrap();
                family[pick.index(family.len())]
            } else {
                pick.index(TYPES.len())
            };
            (
                Just(source),
                Just(target),
                Just(zone),
                Just(checked),
                vec(prop::option::weighted(0.85, value(source)), 1..6),
            )
        })
        .prop_map(|(source, target, zone, checked, values)| Case {
            source,
            target,
            zone,
            checked,
            values,
        })
}

/// The profile column of the local type, with the zone when asked and allowed, and
/// `convert = "checked"` when asked.
fn column(name: &str, local: &str, zone: bool, checked: bool) -> String {
    let zone = if zone && local.starts_with("timestamp") && !local.ends_with("[]") {
        ", time_zone = \"UTC\""
    } else {
        ""
    };
    let checked = if checked {
        ", convert = \"checked\""
    } else {
        ""
    };
    format!("{{ name = \"{name}\", type = \"{local}\"{zone}{checked} }}")
}

/// The per-test runtime and databases (sessions read times in UTC, the declared zone, so
/// timestamps compare as instants).
struct Db {
    rt: tokio::runtime::Runtime,
    env: TestEnv,
}

impl Db {
    fn new(label: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let env = rt.block_on(TestEnv::with_settings(label, &[("TENANT_ID", "1")]));
        Self { rt, env }
    }

    async fn clients(&self) -> (tokio_postgres::Client, tokio_postgres::Client) {
        let local = self.env.local.client().await;
        let remote = self.env.remote.client().await;
        for client in [&local, &remote] {
            client.batch_execute("set timezone to 'UTC'").await.unwrap();
        }
        (local, remote)
    }
}

/// Fills `table` (columns `key`, `v`) on `client` with the case's values, keyed 1, 2, ...
async fn fill(client: &tokio_postgres::Client, table: &str, key: &str, ty: &str, case: &Case) {
    for (i, value) in case.values.iter().enumerate() {
        let key_value = format!("{}", i + 1);
        client
            .execute(
                &format!(
                    "insert into {table} ({key}, v) values ($1::text::{}, $2::text::{ty})",
                    if key == "id" { "bigint" } else { "text" }
                ),
                &[&key_value, value],
            )
            .await
            .unwrap_or_else(|e| panic!("{ty} value {value:?}: {e}"));
    }
}

/// Each target value, cast back to the source type, must read exactly as the source value.
async fn assert_unchanged(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    table: &str,
    key: &str,
    source_type: &str,
    case: &Case,
) {
    let sent = rows_text(
        source,
        &format!("select {key}::text, v::text from {table} order by 1"),
    )
    .await;
    let stored = rows_text(
        target,
        &format!("select {key}::text, (v::{source_type})::text from {table} order by 1"),
    )
    .await;
    assert_eq!(sent, stored, "{case:?}: a value changed on the way");
}

/// Property cases per direction (`PROPTEST_CASES` for more).
const CASES: u32 = 64;

// The integrity issue, part 1: a download either stores every remote value unchanged or is
// refused before anything is applied.
#[test]
fn a_download_stores_every_value_unchanged_or_is_refused_up_front() {
    let db = Db::new("types_dl");
    check_cases_with(CASES, cases(), |case| {
        db.rt.block_on(download_case(&db, &case));
    });
}

/// The probe table's profile, `head` (the entity or readings header) and `key` (the key
/// column) before the column `v` of the local type: the local table is dropped and migrated
/// anew from it.
async fn probe_profile(db: &Db, head: &str, key: &str, local_ty: &str, case: &Case) -> Profile {
    let profile = Profile::parse(
        &format!(
            "{head}\ncolumns = [{key}, {}]\n",
            column("v", local_ty, case.zone, case.checked)
        ),
        "types",
    )
    .unwrap();
    let local = db.env.local.client().await;
    local
        .batch_execute("drop table if exists probe")
        .await
        .unwrap();
    migrate_local(&db.env.local, &profile).await;
    profile
}

/// Downloads one case; true when it was accepted (and every value arrived unchanged).
async fn download_case(db: &Db, case: &Case) -> bool {
    let (remote_ty, local_ty) = (TYPES[case.source], TYPES[case.target]);
    let (local, remote) = db.clients().await;
    remote
        .batch_execute(&format!(
            "drop table if exists probe; create table probe (id bigint primary key, v {remote_ty})"
        ))
        .await
        .unwrap();
    fill(&remote, "probe", "id", remote_ty, case).await;
    let profile = probe_profile(
        db,
        "[[entity]]\nname = \"probe\"\nkey = \"id\"",
        "{ name = \"id\", type = \"bigint\", nullable = false }",
        local_ty,
        case,
    )
    .await;
    let report = crate::support::download(&db.env, &profile, Some("1"), &[]).await;
    let entity = report.entity("probe").unwrap();
    match &entity.error {
        None => {
            assert_unchanged(&remote, &local, "probe", "id", remote_ty, case).await;
            true
        }
        Some(error) => {
            let unfit = case.checked
                && error.contains(&format!(
                    "which the local {} cannot hold (convert = \"checked\")",
                    short(local_ty)
                ));
            assert!(
                unfit
                    || error.contains("column types could change or refuse values on the way")
                        && error.contains(&format!("v: remote {}", short(remote_ty))),
                "{case:?}: a third outcome: {error}"
            );
            assert_eq!(
                count(&local, "probe").await,
                0,
                "{case:?}: refused, yet applied"
            );
            false
        }
    }
}

// The integrity issue, part 1: an upload either stores every reading's value unchanged on the
// central or is refused before any reading is sent or removed.
#[test]
fn an_upload_stores_every_value_unchanged_or_is_refused_up_front() {
    let db = Db::new("types_ul");
    check_cases_with(CASES, (cases(), any::<bool>()), |(case, unique)| {
        db.rt.block_on(upload_case(&db, &case, unique));
    });
}

/// Uploads one case (`unique`: the central has a unique index on the dedupe key); true when it
/// was accepted (and every value arrived unchanged).
async fn upload_case(db: &Db, case: &Case, unique: bool) -> bool {
    let (local_ty, remote_ty) = (TYPES[case.source], TYPES[case.target]);
    let (local, remote) = db.clients().await;
    // With a unique index the batch is copied straight into the table; without, it goes
    // through the stage and an anti-join.
    let index = if unique { ", unique (meter_id)" } else { "" };
    remote
        .batch_execute(&format!(
            "drop table if exists probe; create table probe (meter_id text not null, v {remote_ty}{index})"
        ))
        .await
        .unwrap();
    let profile = probe_profile(
        db,
        "[readings]\ntable = \"probe\"\norder_by = \"id\"\ndedupe_key = \"meter_id\"",
        "{ name = \"meter_id\", type = \"text\", nullable = false }",
        local_ty,
        case,
    )
    .await;
    fill(&local, "probe", "meter_id", local_ty, case).await;
    let before = rows_text(&local, "select meter_id, v::text from probe order by 1").await;
    let report = crate::support::upload(&db.env, &profile).await;
    match &report.error {
        None => {
            // Checked values that do not fit stay queued, quarantined with the reason and
            // unchanged; all others arrive unchanged.
            let kept = rows_text(
                &local,
                "select meter_id, v::text, quarantined_at is not null, sync_error like 'v = % does not fit the remote %' from probe order by 1",
            )
            .await;
            assert!(
                case.checked || kept.is_empty(),
                "{case:?}: readings left behind: {kept:?}"
            );
            assert_eq!(report.quarantined as usize, kept.len(), "{case:?}");
            assert_eq!(
                count(&remote, "probe").await as usize + kept.len(),
                case.values.len(),
                "{case:?}: {report:?}"
            );
            // The local rows are gone: compare with what they were.
            let stored = rows_text(
                &remote,
                &format!(
                    "select meter_id, (v::{local_ty})::text from probe union all
                     select meter_id, v::text from probe_kept order by 1"
                )
                .replace(
                    "probe_kept",
                    &format!(
                        "(select * from (values {}) k(meter_id, v) where meter_id is not null) kept",
                        kept_values(&local).await
                    ),
                ),
            )
            .await;
            assert_eq!(before, stored, "{case:?}: a value changed on the way");
            for row in &kept {
                assert!(
                    row.ends_with(",t,t)"),
                    "{case:?}: kept without the reason: {row}"
                );
            }
            true
        }
        Some(error) => {
            assert!(
                error.contains(
                    "column types could change or refuse values on the way, so nothing was sent"
                ) && error.contains(&format!(
                    "v: remote {}, local {}",
                    short(remote_ty),
                    short(local_ty)
                )),
                "{case:?}: a third outcome: {error}"
            );
            assert_eq!(
                count(&remote, "probe").await,
                0,
                "{case:?}: refused, yet sent"
            );
            let after = rows_text(&local, "select meter_id, v::text from probe order by 1").await;
            assert_eq!(before, after, "{case:?}: refused, yet the queue changed");
            false
        }
    }
}

/// The quarantined local readings as a `values` list of (meter_id, v as text), or a row
/// that matches nothing when there are none.
async fn kept_values(local: &tokio_postgres::Client) -> String {
    let rows = local
        .query(
            "select quote_literal(meter_id), coalesce(quote_literal(v::text), 'null') from probe",
            &[],
        )
        .await
        .unwrap();
    if rows.is_empty() {
        return "(null::text, null::text)".into();
    }
    rows.iter()
        .map(|r| {
            format!(
                "({}, {}::text)",
                r.get::<_, String>(0),
                r.get::<_, String>(1)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A case of the named types with these values.
fn case(source: &str, target: &str, zone: bool, values: &[&str]) -> Case {
    let index = |t: &str| TYPES.iter().position(|x| *x == t).unwrap();
    Case {
        source: index(source),
        target: index(target),
        zone,
        checked: false,
        values: values.iter().map(|v| Some(v.to_string())).collect(),
    }
}

// The integrity issue, part 1, the pairs it names: each decided the same way in both
// directions and on both upload paths.
#[test]
fn the_named_pairs_are_refused_or_converted_exactly() {
    let db = Db::new("types_named");
    let pairs = [
        (
            case("numeric(18, 4)", "numeric(6, 2)", false, &["59.9734"]),
            false,
        ),
        (
            case(
                "numeric(6, 2)",
                "numeric(18, 4)",
                false,
                &["59.97", "-9999.99"],
            ),
            true,
        ),
        (
            case("int4", "int8", false, &["2147483647", "-2147483648"]),
            true,
        ),
        (case("int8", "int4", false, &["5"]), false),
        (
            case("varchar(10)", "text", false, &["ten chars!", "a "]),
            true,
        ),
        (case("text", "varchar(10)", false, &["short"]), false),
        (case("float8", "numeric", false, &["0.1"]), false),
        (case("numeric", "float8", false, &["0.1"]), false),
        (
            case("timestamp", "timestamptz", false, &["2024-03-31 02:30:00"]),
            false,
        ),
        (
            case(
                "timestamp",
                "timestamptz",
                true,
                &["2024-03-31 02:30:00.123456"],
            ),
            true,
        ),
        (
            case(
                "timestamptz",
                "timestamp",
                true,
                &["2024-10-27 01:30:00+00"],
            ),
            true,
        ),
        (
            case(
                "timestamptz",
                "timestamp(3)",
                true,
                &["2024-10-27 01:30:00.123456+00"],
            ),
            false,
        ),
        (case("int4[]", "int8[]", false, &["{1,-2}"]), true),
        (
            case("numeric(6, 2)[]", "numeric(18, 4)[]", false, &["{1.25}"]),
            true,
        ),
        (case("char(5)", "text", false, &["ab"]), false),
    ];
    db.rt.block_on(async {
        for (case, accepted) in &pairs {
            assert_eq!(
                download_case(&db, case).await,
                *accepted,
                "download {case:?}"
            );
            for unique in [false, true] {
                assert_eq!(
                    upload_case(&db, case, unique).await,
                    *accepted,
                    "upload {case:?}, unique index {unique}"
                );
            }
        }
    });
}

// The real-schemas issue, item 1: narrowing pairs PostgreSQL can only refuse per value are
// allowed with `convert = "checked"`; a value that does not fit fails its entity (download) or
// quarantines its reading (upload, both paths), and nothing is ever altered: text with
// trailing spaces is refused too, where PostgreSQL itself would strip them silently.
#[test]
fn checked_narrowing_pairs_refuse_only_the_values_that_do_not_fit() {
    let db = Db::new("types_checked");
    let checked = |source, target, values: &[&str]| Case {
        checked: true,
        ..case(source, target, false, values)
    };
    db.rt.block_on(async {
        for (case, fits) in [
            (checked("int8", "int4", &["5", "-2147483648"]), true),
            (checked("int8", "int4", &["5", "3000000000"]), false),
            (checked("int4", "int2", &["-32768", "32767"]), true),
            (
                checked("text", "varchar(10)", &["short", "ten chars!"]),
                true,
            ),
            (
                checked("text", "varchar(10)", &["short", "ten chars!  "]),
                false,
            ),
            (
                checked("varchar(40)", "varchar(10)", &["eleven char"]),
                false,
            ),
            (checked("numeric(18, 4)", "numeric(10, 0)", &["1.5"]), false),
            (checked("int8", "numeric(10, 0)", &["9999999999"]), true),
            (checked("int8", "numeric(10, 0)", &["10000000000"]), false),
        ] {
            if case.source == 4 {
                // numeric(18, 4) -> numeric(10, 0) rounds: refused even when checked.
                assert!(!download_case(&db, &case).await, "{case:?}");
                continue;
            }
            assert_eq!(download_case(&db, &case).await, fits, "download {case:?}");
            for unique in [false, true] {
                assert!(upload_case(&db, &case, unique).await, "upload {case:?}");
                let local = db.env.local.client().await;
                assert_eq!(
                    count(&local, "probe").await == 0,
                    fits,
                    "upload {case:?}: a value that does not fit stays queued"
                );
            }
        }
    });
}

/// How the rule's messages print a type of [`TYPES`] (catalog names, no spaces).
fn short(ty: &str) -> String {
    let base = ty.trim_end_matches("[]");
    let array = if base.len() < ty.len() { "[]" } else { "" };
    let (name, modifier) = match base.split_once('(') {
        Some((name, rest)) => (name, format!("({}", rest.replace(' ', ""))),
        None => (base, String::new()),
    };
    let name = match name {
        "char" => "bpchar",
        "boolean" => "bool",
        other => other,
    };
    format!("{name}{modifier}{array}")
}
