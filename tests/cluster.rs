//! The throwaway-cluster harness itself.

use meter_sync::pgcluster::{ClusterOptions, PgCluster, StopMode};

use crate::support::connect;

fn options(label: &str) -> ClusterOptions {
    ClusterOptions {
        label: label.into(),
        ..ClusterOptions::default()
    }
}

#[tokio::test]
async fn cluster_starts_accepts_connections_and_stops() {
    let mut cluster =
        tokio::task::spawn_blocking(|| PgCluster::start(&options("start-stop")).unwrap())
            .await
            .unwrap();
    let client = connect(&cluster, "postgres").await;
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let user: String = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "postgres");
    drop(client);
    cluster.stop(StopMode::Fast).unwrap();
    assert!(!cluster.is_running());
    assert!(cluster
        .connect_config("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .is_err());
}

#[tokio::test]
async fn two_clusters_run_at_once_on_different_ports() {
    let (a, b) = tokio::task::spawn_blocking(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| PgCluster::start(&options("pair-a")).unwrap());
            let b = s.spawn(|| PgCluster::start(&options("pair-b")).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        })
    })
    .await
    .unwrap();
    assert_ne!(a.port(), b.port());
    let ca = connect(&a, "postgres").await;
    let cb = connect(&b, "postgres").await;
    ca.batch_execute("create table only_in_a (x int)")
        .await
        .unwrap();
    let in_b: bool = cb
        .query_one("select to_regclass('only_in_a') is not null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_b, "the clusters are separate");
}

#[tokio::test]
async fn dropping_a_cluster_stops_it_and_removes_its_directory() {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(&options("drop")).unwrap())
        .await
        .unwrap();
    let dir = cluster.socket_dir().to_path_buf();
    let config = cluster.connect_config("postgres");
    assert!(dir.join("data").join("PG_VERSION").is_file());
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        config.connect(tokio_postgres::NoTls).await.is_err(),
        "server still answers"
    );
}

#[tokio::test]
async fn a_cluster_stopped_immediately_restarts_with_its_data() {
    let mut cluster =
        tokio::task::spawn_blocking(|| PgCluster::start(&options("restart")).unwrap())
            .await
            .unwrap();
    let client = connect(&cluster, "postgres").await;
    client
        .batch_execute("create table kept (x int); insert into kept values (7)")
        .await
        .unwrap();
    drop(client);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop(StopMode::Immediate).unwrap();
        cluster.restart().unwrap();
        cluster
    })
    .await
    .unwrap();
    let client = connect(&cluster, "postgres").await;
    let x: i32 = client
        .query_one("select x from kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 7);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[test]
fn server_binaries_are_found() {
    let dir = PgCluster::find_bin_dir().unwrap();
    assert!(dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
}
