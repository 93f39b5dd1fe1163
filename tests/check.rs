//! `meter-sync check` and configuration errors, through the real binary.

use std::process::Command;

use crate::support::TestEnv;

pub(crate) fn meter_sync(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meter-sync"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_succeeds_against_both_harness_databases() {
    let env = TestEnv::new("check_ok").await;
    // A dry run of the profile: the tables it names must exist.
    crate::support::load_remote_fixture(
        &env.remote,
        meter_sync::fixture::Layout::Default,
        meter_sync::fixture::FixtureSize::default(),
    )
    .await;
    crate::support::migrate_local(
        &env.local,
        &meter_sync::profile::Profile::builtin_default().unwrap(),
    )
    .await;
    let vars = env.env(&[
        ("POSTGRES_CLIENT_PASSWORD", "not-needed-but-secret"),
        ("TENANT_ID", "1"),
    ]);
    let (code, out, err) = tokio::task::spawn_blocking(move || meter_sync(&vars, &["check"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("local database 127.0.0.1:"), "{out}");
    assert!(out.contains(": ok (PostgreSQL 1"), "{out}");
    assert!(out.contains("profile: built-in default (entities in order: tenant, meter, register, device_register)"), "{out}");
    assert!(out.contains("profile check (every statement prepared, every column pair compared, nothing written): ok"), "{out}");
    for part in [
        "entity tenant: ok",
        "entity device_register: ok",
        "readings meter_readings -> remote meter_readings: ok",
    ] {
        assert!(out.contains(part), "{part:?} in {out}");
    }
    assert!(
        out.contains("POSTGRES_CLIENT_PASSWORD=******** (environment)"),
        "{out}"
    );
    assert!(!out.contains("not-needed-but-secret") && !err.contains("not-needed-but-secret"));
}

#[tokio::test]
async fn check_names_the_remote_side_when_its_port_is_closed() {
    let env = TestEnv::new("check_closed").await;
    let closed = meter_sync::pgcluster::free_port().unwrap().to_string();
    let vars = env.env(&[("POSTGRES_CLIENT_PORT", &closed)]);
    let (code, out, err) =
        tokio::task::spawn_blocking(move || meter_sync(&vars, &["check", "--json"]))
            .await
            .unwrap();
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["databases"][0]["side"], "local");
    assert_eq!(report["databases"][0]["ok"], true);
    let remote = &report["databases"][1];
    assert_eq!(remote["side"], "remote");
    assert_eq!(remote["ok"], false);
    let error = remote["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("remote database 127.0.0.1:{closed}/")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[tokio::test]
async fn check_reports_a_missing_database_with_the_server_message() {
    let env = TestEnv::new("check_nodb").await;
    let vars = env.env(&[("POSTGRES_CLIENT_DB", "no_such_database")]);
    let (code, out, _) = tokio::task::spawn_blocking(move || meter_sync(&vars, &["check"]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("remote database 127.0.0.1:"), "{out}");
    assert!(
        out.contains("database \"no_such_database\" does not exist"),
        "{out}"
    );
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_key() {
    let env = TestEnv::new("check_badcfg").await;
    let vars = env.env(&[
        ("BATCH_SIZE", "lots"),
        ("POSTGRES_SYNC_PASSWORD", "pw-do-not-print"),
    ]);
    let (code, out, err) = tokio::task::spawn_blocking(move || meter_sync(&vars, &["check"]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(
            "BATCH_SIZE=\"lots\" (from environment): expected a whole number from 1 to 1000000"
        ),
        "{err}"
    );
    assert!(!err.contains("pw-do-not-print"));
}

#[tokio::test]
async fn migrate_command_reports_changes_then_up_to_date() {
    let env = TestEnv::new("cli_migrate").await;
    let vars = env.env(&[]);
    let (code, out, err) = tokio::task::spawn_blocking({
        let vars = vars.clone();
        move || meter_sync(&vars, &["migrate"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created table \"device_register\""), "{out}");
    let (code, out, _) = tokio::task::spawn_blocking(move || meter_sync(&vars, &["migrate"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("local schema is up to date"), "{out}");
}

#[tokio::test]
async fn a_broken_profile_file_exits_2_with_its_problems() {
    let env = TestEnv::new("cli_profile").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[entity]]\nname = \"meter; drop table x\"\nkey = \"id\"\ncolumns = [{ name = \"id\", type = \"bigint\" }]\n",
    )
    .unwrap();
    let vars = env.env(&[("SYNC_PROFILE", path.to_str().unwrap())]);
    let (code, _, err) = tokio::task::spawn_blocking(move || meter_sync(&vars, &["check"]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`meter; drop table x` is not a plain SQL identifier"),
        "{err}"
    );
}

#[tokio::test]
async fn download_command_prints_a_table_or_json_and_sets_the_exit_code() {
    let (env, _) = crate::support::default_env("cli_download").await;
    let vars = env.env(&[("TENANT_ID", "1")]);
    let (code, out, err) = tokio::task::spawn_blocking({
        let vars = vars.clone();
        move || meter_sync(&vars, &["download"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("download for tenant 1: ok in "), "{out}");
    let meter_line = out.lines().find(|l| l.starts_with("meter ")).unwrap();
    assert!(
        meter_line.contains(" 25 ") && meter_line.ends_with("ok"),
        "{meter_line}"
    );

    let (code, out, _) = tokio::task::spawn_blocking({
        let vars = vars.clone();
        move || meter_sync(&vars, &["download", "--entity", "register", "--json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["success"], true);
    assert_eq!(report["entities"].as_array().unwrap().len(), 1);
    assert_eq!(report["entities"][0]["entity"], "register");
    assert_eq!(
        report["sync_result"]["registers"]["inserted"], 0,
        "already mirrored"
    );

    let (code, _, err) = tokio::task::spawn_blocking({
        let vars = vars.clone();
        move || meter_sync(&vars, &["download", "--entity", "nope"])
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "unknown entity `nope`; the profile has: tenant, meter, register, device_register"
        ),
        "{err}"
    );

    let remote = env.remote.client().await;
    remote
        .batch_execute("drop table register cascade")
        .await
        .unwrap();
    let (code, out, _) =
        tokio::task::spawn_blocking(move || meter_sync(&vars, &["download", "--full"]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("register") && out.contains("FAILED: remote database"),
        "{out}"
    );
}
