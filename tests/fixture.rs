//! The remote fixture generators.

use meter_sync::fixture::{FixtureSize, Layout};

use crate::support::{count, load_remote_fixture, table_checksum, TestDb};

#[tokio::test]
async fn default_fixture_has_two_tenants_and_the_expected_counts() {
    let db = TestDb::create(&crate::support::clusters().remote, "fixture_default").await;
    load_remote_fixture(&db, Layout::Default, FixtureSize::default()).await;
    let client = db.client().await;
    assert_eq!(count(&client, "tenant").await, 2);
    assert_eq!(count(&client, "meter").await, 50);
    assert_eq!(count(&client, "register").await, 20);
    assert_eq!(count(&client, "device_register").await, 150);
    let per_tenant: Vec<(i64, i64)> = client
        .query(
            "select tenant_id, count(*) from meter group by 1 order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_tenant, [(1, 25), (2, 25)]);
    // Every association links a tenant's device to a register of the same tenant.
    let crossed: i64 = client
        .query_one(
            "select count(*) from device_register dr join register r on r.id = dr.register_id
             join meter m on m.device_id = dr.device_id where m.tenant_id <> r.tenant_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(crossed, 0);
}

#[tokio::test]
async fn fixture_is_deterministic() {
    let size = FixtureSize {
        tenants: 3,
        meters_per_tenant: 7,
        elements_per_meter: 2,
        registers_per_tenant: 4,
        registers_per_device: 2,
    };
    let mut sums = Vec::new();
    for n in 0..2 {
        let db = TestDb::create(
            &crate::support::clusters().remote,
            &format!("fixture_det{n}"),
        )
        .await;
        load_remote_fixture(&db, Layout::Default, size).await;
        let client = db.client().await;
        let mut sum = Vec::new();
        for table in ["tenant", "meter", "register", "device_register"] {
            sum.push(table_checksum(&client, table).await);
        }
        assert_eq!(count(&client, "meter").await, 3 * 7 * 2);
        sums.push(sum);
    }
    assert_eq!(sums[0], sums[1]);
}

#[tokio::test]
async fn db_sync_process_fixture_uses_varchar_keys() {
    let db = TestDb::create(&crate::support::clusters().remote, "fixture_004").await;
    load_remote_fixture(&db, Layout::DbSyncProcess, FixtureSize::default()).await;
    let client = db.client().await;
    assert_eq!(count(&client, "tenant").await, 2);
    assert_eq!(count(&client, "meters").await, 50);
    let id: String = client
        .query_one(
            "select meter_id from meters where tenant_id = 'tenant-2' order by meter_id limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, "M-2-1");
}
