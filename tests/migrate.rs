//! `meter-sync migrate`: the local schema of a profile, idempotent.

use meter_sync::profile::{Profile, DB_SYNC_PROCESS_PROFILE_TOML};

use crate::support::{migrate_local, TestDb};

/// Everything about the schema a migrate could change: columns with types and defaults,
/// indexes, views, and the migration records.
async fn schema_snapshot(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for query in [
        "select table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
         from information_schema.columns where table_schema = 'public' order by table_name, ordinal_position",
        "select indexname || ' ' || indexdef from pg_indexes where schemaname = 'public' order by 1",
        "select viewname || ' ' || definition from pg_views where schemaname = 'public' order by 1",
        "select version || ' ' || name || ' ' || checksum || ' ' || applied_at from meter_sync_schema_migrations order by version",
    ] {
        for row in client.query(query, &[]).await.unwrap() {
            out.push(row.get::<_, String>(0));
        }
    }
    out
}

#[tokio::test]
async fn migrate_twice_changes_nothing_the_second_time() {
    let db = TestDb::create(&crate::support::clusters().local, "migrate_twice").await;
    let profile = Profile::builtin_default().unwrap();
    let first = migrate_local(&db, &profile).await;
    assert!(
        first.changes.iter().any(|c| c == "created table \"meter\""),
        "{first:?}"
    );
    assert!(
        first
            .changes
            .iter()
            .any(|c| c == "created table \"meter_readings\""),
        "{first:?}"
    );
    assert!(first.warnings.is_empty(), "{first:?}");
    let client = db.client().await;
    let before = schema_snapshot(&client).await;

    let second = migrate_local(&db, &profile).await;
    assert!(
        second.changes.is_empty(),
        "second run changed {:?}",
        second.changes
    );
    assert!(second.warnings.is_empty(), "{second:?}");
    assert_eq!(schema_snapshot(&client).await, before);
}

#[tokio::test]
async fn migrate_creates_every_table_key_index_and_the_log_view() {
    let db = TestDb::create(&crate::support::clusters().local, "migrate_tables").await;
    migrate_local(&db, &Profile::builtin_default().unwrap()).await;
    let client = db.client().await;
    let tables: Vec<String> = client
        .query(
            "select tablename::text from pg_tables where schemaname = 'public' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "device_register",
            "meter",
            "meter_readings",
            "meter_sync_download_state",
            "meter_sync_schema_migrations",
            "meter_sync_upload_epoch",
            "meter_sync_upload_ledger",
            "register",
            "sync_logs",
            "tenant"
        ]
    );
    let pk: String = client
        .query_one(
            "select pg_get_constraintdef(oid) from pg_constraint where conrelid = 'meter'::regclass and contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (id, meter_element_id)");
    let index: String = client
        .query_one(
            "select indexdef from pg_indexes where indexname = 'meter_readings_sync_queue_idx'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        index.ends_with("(is_synchronized, \"timestamp\", id)"),
        "{index}"
    );
    let no_tenant_column: i64 = client
        .query_one(
            "select count(*) from information_schema.columns where table_schema = 'public' and column_name = 'tenant_id' and table_name <> 'tenant'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        no_tenant_column, 0,
        "local configuration tables carry no tenant_id"
    );
    // The view reads meter download rows of sync_logs.
    client
        .batch_execute(
            "insert into sync_logs (sync_type, entity, success, inserted, updated, deleted) values
             ('download', 'meter', true, 3, 2, 1), ('download', 'register', true, 9, 9, 9), ('upload', null, true, 0, 0, 0)",
        )
        .await
        .unwrap();
    let row = client
        .query_one("select count(*), sum(inserted_count), sum(updated_count), sum(deleted_count) from meter_sync_log", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i64>(1), 3);
}

#[tokio::test]
async fn migrate_adds_a_column_the_profile_gained_and_warns_on_a_type_mismatch() {
    let db = TestDb::create(&crate::support::clusters().local, "migrate_evolve").await;
    let client = db.client().await;
    client
        .batch_execute("create table register (id bigint primary key, name text not null, register bigint not null)")
        .await
        .unwrap();
    let report = migrate_local(&db, &Profile::builtin_default().unwrap()).await;
    for column in ["unit", "field_name"] {
        assert!(
            report
                .changes
                .contains(&format!("added column \"register\".\"{column}\"")),
            "{report:?}"
        );
    }
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(
        report.warnings[0]
            .contains("\"register\".\"register\" has type bigint but the profile says integer"),
        "{report:?}"
    );
    let again = migrate_local(&db, &Profile::builtin_default().unwrap()).await;
    assert!(again.changes.is_empty(), "{again:?}");
}

#[tokio::test]
async fn migrate_builds_the_db_sync_process_layout() {
    let db = TestDb::create(&crate::support::clusters().local, "migrate_004").await;
    let profile = Profile::parse(DB_SYNC_PROCESS_PROFILE_TOML, "004").unwrap();
    migrate_local(&db, &profile).await;
    let client = db.client().await;
    let ty: String = client
        .query_one(
            "select format_type(atttypid, atttypmod) from pg_attribute where attrelid = 'meters'::regclass and attname = 'meter_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "character varying(255)");
    assert!(migrate_local(&db, &profile).await.changes.is_empty());
}

#[tokio::test]
async fn concurrent_migrates_do_not_collide() {
    let db = TestDb::create(&crate::support::clusters().local, "migrate_concurrent").await;
    let profile = Profile::builtin_default().unwrap();
    let (a, b) = tokio::join!(migrate_local(&db, &profile), migrate_local(&db, &profile));
    assert!(
        a.changes.is_empty() != b.changes.is_empty(),
        "exactly one did the work: {a:?} {b:?}"
    );
}
