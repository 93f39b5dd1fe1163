//! TLS to the databases: a throwaway cluster started with `ssl = on` and a CA and server
//! certificate generated here (rcgen). verify-full succeeds with the right CA and host name
//! and fails clearly with a wrong CA or name; verify-ca ignores the name; require refuses a
//! server without TLS; prefer falls back to plain; a whole sync runs over TLS on both sides.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meter_sync::config::{PoolConfig, SslMode};
use meter_sync::fixture::{FixtureSize, Layout};
use meter_sync::pgcluster::{ClusterOptions, PgCluster};
use meter_sync::profile::Profile;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::support::{clusters, config_from, connect, count, download_with};

/// A CA: its PEM certificate and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// The TLS cluster and the files of its PKI.
struct Tls {
    cluster: PgCluster,
    dir: tempfile::TempDir,
}

impl Tls {
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn wrong_ca(&self) -> PathBuf {
        self.dir.path().join("wrong-ca.pem")
    }
}

/// Writes `contents` readable by the server (owned by the `postgres` user when running as
/// root: the server refuses a key file others can read).
fn write_for_server(path: &Path, contents: &str, mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
}

static TLS: OnceLock<Tls> = OnceLock::new();

/// One TLS cluster for the module: its certificate names `localhost` only.
fn tls() -> &'static Tls {
    TLS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("meter-sync-tls-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca = new_ca("meter-sync test CA");
        let wrong = new_ca("some other CA");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "central.test");
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        write_for_server(&cert_path, &cert.pem(), 0o644);
        write_for_server(&key_path, &key.serialize_pem(), 0o600);
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(dir.path().join("wrong-ca.pem"), &wrong.pem).unwrap();
        let quoted = |p: &Path| format!("'{}'", p.display());
        let cluster = PgCluster::start(&ClusterOptions {
            label: "test-tls".into(),
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), quoted(&cert_path)),
                ("ssl_key_file".into(), quoted(&key_path)),
            ],
            ..ClusterOptions::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the TLS cluster: {e}"));
        Tls { cluster, dir }
    })
}

fn pool_config() -> PoolConfig {
    PoolConfig {
        max_size: 2,
        idle_timeout: std::time::Duration::from_secs(5),
        connection_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(60),
        keepalives_idle: std::time::Duration::from_secs(60),
    }
}

/// Connects to `host`:`port` with `mode` and `ca`; on success, whether the session is
/// encrypted (from `pg_stat_ssl`).
async fn try_connect(
    host: &str,
    port: u16,
    mode: SslMode,
    ca: Option<PathBuf>,
) -> Result<bool, String> {
    let mut db = clusters()
        .remote
        .db_config(meter_sync::config::Side::Remote, "postgres");
    db.host = host.to_string();
    db.port = port;
    db.sslmode = mode;
    db.sslrootcert = ca;
    let client = meter_sync::data::pg::connect(&db, &pool_config())
        .await
        .map_err(|e| {
            // A certificate that does not verify will not fix itself: never retried.
            let text = meter_sync::error::chain(&e);
            assert!(!e.is_retryable() || !text.contains("certificate"), "{text}");
            text
        })?;
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

/// Which CA file the client trusts.
#[derive(Clone, Copy)]
enum Trust {
    Right,
    Wrong,
}

/// [`try_connect`] to the TLS cluster.
async fn to_tls(host: &str, mode: SslMode, trust: Trust) -> Result<bool, String> {
    let tls = tls();
    let ca = match trust {
        Trust::Right => tls.ca(),
        Trust::Wrong => tls.wrong_ca(),
    };
    try_connect(host, tls.cluster.port(), mode, Some(ca)).await
}

#[tokio::test]
async fn verify_full_succeeds_with_the_right_ca_and_host_name() {
    assert!(to_tls("localhost", SslMode::VerifyFull, Trust::Right)
        .await
        .unwrap());
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let error = to_tls("localhost", SslMode::VerifyFull, Trust::Wrong)
        .await
        .unwrap_err();
    assert!(
        error.contains("remote database localhost:") && error.contains("UnknownIssuer"),
        "{error}"
    );
    // verify-ca checks the chain too.
    let error = to_tls("localhost", SslMode::VerifyCa, Trust::Wrong)
        .await
        .unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_name() {
    // The certificate names localhost, not 127.0.0.1.
    let error = to_tls("127.0.0.1", SslMode::VerifyFull, Trust::Right)
        .await
        .unwrap_err();
    assert!(error.contains("certificate not valid for name"), "{error}");
    // verify-ca accepts it: the chain is right, the name is not checked.
    assert!(to_tls("127.0.0.1", SslMode::VerifyCa, Trust::Right)
        .await
        .unwrap());
}

#[tokio::test]
async fn require_refuses_a_server_without_tls_and_prefer_falls_back() {
    let plain = clusters().remote.port();
    let error = try_connect("127.0.0.1", plain, SslMode::Require, None)
        .await
        .unwrap_err();
    assert!(
        error.contains("remote database 127.0.0.1:") && error.to_lowercase().contains("tls"),
        "{error}"
    );
    assert!(!try_connect("127.0.0.1", plain, SslMode::Prefer, None)
        .await
        .unwrap());
    // prefer and require encrypt when the server offers TLS, whatever its certificate.
    let port = tls().cluster.port();
    assert!(try_connect("127.0.0.1", port, SslMode::Prefer, None)
        .await
        .unwrap());
    assert!(try_connect("127.0.0.1", port, SslMode::Require, None)
        .await
        .unwrap());
    // disable never negotiates.
    assert!(!try_connect("127.0.0.1", port, SslMode::Disable, None)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_download_runs_over_verified_tls_on_both_sides() {
    let tls = tls();
    let port = tls.cluster.port().to_string();
    let admin = connect(&tls.cluster, "postgres").await;
    // verify-full implies TLS: the driver insists on it for every verifying mode.
    for db in ["tls_local", "tls_remote"] {
        admin
            .batch_execute(&format!("create database {db}"))
            .await
            .unwrap();
    }
    let remote = connect(&tls.cluster, "tls_remote").await;
    meter_sync::fixture::load_remote(&remote, Layout::Default, FixtureSize::default())
        .await
        .unwrap();
    let profile = Profile::builtin_default().unwrap();
    let mut local = connect(&tls.cluster, "tls_local").await;
    meter_sync::data::schema::migrate(&mut local, &profile)
        .await
        .unwrap();
    let ca = tls.ca().display().to_string();
    let pairs = [
        ("POSTGRES_SYNC_HOST", "localhost"),
        ("POSTGRES_SYNC_PORT", port.as_str()),
        ("POSTGRES_SYNC_DB", "tls_local"),
        ("POSTGRES_SYNC_USER", "postgres"),
        ("POSTGRES_SYNC_SSLMODE", "verify-full"),
        ("POSTGRES_SYNC_SSLROOTCERT", ca.as_str()),
        ("POSTGRES_CLIENT_HOST", "localhost"),
        ("POSTGRES_CLIENT_PORT", port.as_str()),
        ("POSTGRES_CLIENT_DB", "tls_remote"),
        ("POSTGRES_CLIENT_USER", "postgres"),
        ("POSTGRES_CLIENT_SSLMODE", "verify-full"),
        ("POSTGRES_CLIENT_SSLROOTCERT", ca.as_str()),
    ];
    let load = |pairs: &[(&str, &str)]| {
        config_from(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let report = download_with(&load(&pairs), &profile, Some("1"), &[]).await;
    assert!(report.success(), "{:?}", report.first_error());
    assert_eq!(count(&local, "meter").await, 25);
    // The same settings with the wrong CA on the local side: a clear local error.
    let wrong = tls.wrong_ca().display().to_string();
    let mut pairs = pairs.to_vec();
    pairs[5].1 = wrong.as_str();
    let report = download_with(&load(&pairs), &profile, Some("1"), &[]).await;
    let error = report.first_error().unwrap_or_default();
    assert!(
        error.contains("local database") && error.contains("UnknownIssuer"),
        "{error}"
    );
}
