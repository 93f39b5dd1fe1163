//! `meter-sync demo`: the whole service on throwaway clusters, with live data. Starts a local
//! and a remote cluster, loads the remote fixture (two tenants, 50 meters, registers,
//! associations), migrates the local database, generates readings at a steady rate, changes
//! the remote configuration now and then, and runs the service (scheduler with short
//! intervals, API, page, `/mcp`). Ctrl-C stops everything and removes the clusters.

use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{Config, Sources};
use crate::error::{chain, Exit};
use crate::fixture::{self, FixtureSize, Layout};
use crate::pgcluster::{ClusterOptions, PgCluster};
use crate::profile::Profile;
use crate::service::Service;
use crate::surface::app::App;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub port: u16,
    /// Readings generated per second.
    pub rate: u32,
    /// Seconds between uploads.
    pub upload_every: u32,
    /// Seconds between remote configuration changes (0: never).
    pub change_every: u32,
}

async fn start_cluster(label: &'static str) -> Result<PgCluster, String> {
    tokio::task::spawn_blocking(move || {
        PgCluster::start(&ClusterOptions {
            label: format!("demo-{label}"),
            ..ClusterOptions::default()
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot start the {label} cluster: {e}"))
}

async fn connect(cluster: &PgCluster, db: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = cluster
        .connect_config(db)
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {db}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Clusters with the fixture loaded and the local schema migrated.
async fn prepare(profile: &Profile) -> Result<(PgCluster, PgCluster), String> {
    let (local, remote) = tokio::join!(start_cluster("local"), start_cluster("remote"));
    let (local, remote) = (local?, remote?);
    connect(&remote, "postgres")
        .await?
        .batch_execute("create database central")
        .await
        .map_err(|e| e.to_string())?;
    connect(&local, "postgres")
        .await?
        .batch_execute("create database site")
        .await
        .map_err(|e| e.to_string())?;
    let central = connect(&remote, "central").await?;
    fixture::load_remote(&central, Layout::Default, FixtureSize::default())
        .await
        .map_err(|e| chain(&e))?;
    let mut site = connect(&local, "site").await?;
    crate::data::schema::migrate(&mut site, profile)
        .await
        .map_err(|e| chain(&e))?;
    Ok((local, remote))
}

fn demo_config(
    local: &PgCluster,
    remote: &PgCluster,
    options: &DemoOptions,
) -> Result<Config, String> {
    let env = [
        ("POSTGRES_SYNC_HOST", local.host().to_string()),
        ("POSTGRES_SYNC_PORT", local.port().to_string()),
        ("POSTGRES_SYNC_DB", "site".into()),
        ("POSTGRES_SYNC_SSLMODE", "disable".into()),
        ("POSTGRES_CLIENT_HOST", remote.host().to_string()),
        ("POSTGRES_CLIENT_PORT", remote.port().to_string()),
        ("POSTGRES_CLIENT_DB", "central".into()),
        ("POSTGRES_CLIENT_SSLMODE", "disable".into()),
        ("TENANT_ID", "1".into()),
        ("SYNC_INTERVAL_SECONDS", options.upload_every.to_string()),
        ("METER_SYNC_CRON", "*/2 * * * *".into()),
        ("RETRY_BASE_SECONDS", "0.5".into()),
        ("MAX_CONNECTION_RETRIES", "1".into()),
        ("DB_CONNECTION_TIMEOUT_MS", "2000".into()),
        ("SHUTDOWN_GRACE_SECONDS", "10".into()),
        ("API_HOST", "127.0.0.1".into()),
        ("API_PORT", options.port.to_string()),
    ];
    Config::load(&Sources {
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..Sources::default()
    })
    .map_err(|e| chain(&e))
}

/// Inserts readings every second until the task is aborted.
async fn generate_readings(local: tokio_postgres::Client, rate: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = fixture::insert_live_readings(&local, i64::from(rate)).await {
            tracing::warn!(error = %e, "demo: cannot generate readings");
        }
    }
}

/// Changes the remote configuration every `every` seconds until the task is aborted.
async fn change_remote(remote: tokio_postgres::Client, every: u32) {
    let mut round = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(u64::from(every))).await;
        round += 1;
        match fixture::change_remote_config(&remote, round).await {
            Ok(done) => tracing::info!("demo: central configuration changed: {done}"),
            Err(e) => tracing::warn!(error = %e, "demo: cannot change the central configuration"),
        }
    }
}

/// `meter-sync demo`.
pub async fn run(options: DemoOptions) -> ExitCode {
    if let Err(e) = PgCluster::find_bin_dir() {
        eprintln!("meter-sync demo needs the PostgreSQL server binaries: {e}");
        return Exit::Usage.into();
    }
    let profile = match Profile::builtin_default() {
        Ok(profile) => profile,
        Err(e) => {
            eprintln!("meter-sync: {}", chain(&e));
            return Exit::Failed.into();
        }
    };
    eprintln!("meter-sync demo: starting two throwaway PostgreSQL clusters...");
    let (local, remote) = match prepare(&profile).await {
        Ok(clusters) => clusters,
        Err(message) => {
            eprintln!("meter-sync demo: {message}");
            return Exit::Failed.into();
        }
    };
    let config = match demo_config(&local, &remote, &options) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("meter-sync demo: {message}");
            return Exit::Failed.into();
        }
    };
    let listener = match TcpListener::bind((config.api_host, options.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "meter-sync demo: cannot listen on 127.0.0.1:{}: {e}; pick another with --port",
                options.port
            );
            return Exit::Failed.into();
        }
    };
    let (site, central) = match (
        connect(&local, "site").await,
        connect(&remote, "central").await,
    ) {
        (Ok(site), Ok(central)) => (site, central),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("meter-sync demo: {e}");
            return Exit::Failed.into();
        }
    };
    let service = match Service::new(config, profile) {
        Ok(service) => service,
        Err(e) => {
            eprintln!("meter-sync demo: {}", chain(&e));
            return Exit::Failed.into();
        }
    };
    let app = match App::start(service, listener, true) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("meter-sync demo: cannot start the HTTP server: {e}");
            return Exit::Failed.into();
        }
    };
    let generator = tokio::spawn(generate_readings(site, options.rate));
    let changer = (options.change_every > 0)
        .then(|| tokio::spawn(change_remote(central, options.change_every)));
    let url = format!("http://{}", app.addr);
    println!();
    println!(
        "  meter-sync demo is running (local cluster on port {}, central on port {}).",
        local.port(),
        remote.port()
    );
    println!();
    println!("  Sync Status page:  {url}/");
    println!("  MCP (streamable HTTP): {url}/mcp");
    println!("  API docs:          {url}/docs");
    println!();
    println!("  {} readings/s are generated locally; uploads run every {} s, the meter sync every 2 min;", options.rate, options.upload_every);
    if options.change_every > 0 {
        println!(
            "  the central configuration changes every {} s.",
            options.change_every
        );
    }
    println!();
    println!("  Three things to try:");
    println!("   1. Open {url}/ and press \"Upload now\": the queue empties and the chart gains a point.");
    println!("   2. curl -s {url}/api/local/sync-status | jq   (or -X POST {url}/api/local/meter-sync-trigger)");
    println!("   3. Add the MCP server to a client: {{\"mcpServers\": {{\"meter-sync\": {{\"url\": \"{url}/mcp\"}}}}}}");
    println!("      and ask it for get_sync_status or trigger_sync.");
    println!();
    println!("  Ctrl-C stops everything and removes the clusters.");
    crate::surface::app::stop_signal().await;
    generator.abort();
    if let Some(changer) = changer {
        changer.abort();
    }
    app.stop().await;
    drop((local, remote));
    eprintln!("meter-sync demo: stopped; clusters removed");
    Exit::Ok.into()
}
