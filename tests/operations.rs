//! What an operator installs and runs: the systemd notify protocol of a real `meter-sync run`,
//! shell completions and the man page from the clap definitions, and the log file's rotation.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use meter_sync::pgcluster::free_port;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{agent, spawn, upload_env, wait_exit};

/// The datagrams received on `socket` until `done` holds for one, within `limit`; each
/// datagram is one message of `KEY=VALUE` lines.
fn receive_until(
    socket: &UnixDatagram,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Vec<String> {
    let started = Instant::now();
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    loop {
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let finished = done(&message);
            messages.push(message);
            if finished {
                return messages;
            }
        }
        assert!(
            started.elapsed() < limit,
            "no matching notification within {limit:?}: {messages:?}"
        );
    }
}

#[tokio::test]
async fn run_tells_systemd_ready_pings_the_watchdog_and_says_stopping() {
    let (env, _profile) = upload_env("ops_notify", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let port = free_port().unwrap();
    let mut vars = env.env(&[
        ("TENANT_ID", "1"),
        ("API_PORT", &port.to_string()),
        ("SYNC_INTERVAL_SECONDS", "3600"),
    ]);
    vars.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    // A 600 ms watchdog: a ping every 300 ms.
    vars.push(("WATCHDOG_USEC".into(), "600000".into()));
    let started = Instant::now();
    let child = spawn(&["run"], &vars);
    let pid = Pid::from_raw(child.id() as i32);
    let messages = tokio::task::spawn_blocking(move || {
        let ready = receive_until(&socket, Duration::from_secs(30), |m| {
            m.lines().any(|l| l == "READY=1")
        });
        // Ready is said only once the API listens.
        let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let ready_at = started.elapsed();
        let pings = receive_until(&socket, Duration::from_secs(10), |m| m == "WATCHDOG=1\n");
        let more = receive_until(&socket, Duration::from_secs(10), |m| m == "WATCHDOG=1\n");
        kill(pid, Signal::SIGTERM).unwrap();
        let stopping = receive_until(&socket, Duration::from_secs(30), |m| {
            m.lines().any(|l| l == "STOPPING=1")
        });
        (ready, listening, ready_at, pings, more, stopping)
    });
    let (ready, listening, ready_at, pings, more, stopping) = messages.await.unwrap();
    assert!(listening, "READY=1 before the API listened");
    assert!(
        ready
            .last()
            .unwrap()
            .contains(&format!("STATUS=listening on http://127.0.0.1:{port}")),
        "{ready:?}"
    );
    assert!(ready_at < Duration::from_secs(30));
    assert!(pings.last().is_some() && more.last().is_some());
    assert!(stopping.last().unwrap().contains("STATUS=stopping"));
    let (code, stderr) = wait_exit(child, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("systemd watchdog enabled"), "{stderr}");
}

#[tokio::test]
async fn without_a_watchdog_or_a_notify_socket_run_starts_and_stops_as_before() {
    // WATCHDOG_USEC for another process (WATCHDOG_PID) is not ours: no pings, no failure.
    let (env, _profile) = upload_env("ops_no_notify", &[]).await;
    let port = free_port().unwrap();
    let mut vars = env.env(&[
        ("TENANT_ID", "1"),
        ("API_PORT", &port.to_string()),
        ("SYNC_INTERVAL_SECONDS", "3600"),
    ]);
    vars.push(("WATCHDOG_USEC".into(), "600000".into()));
    vars.push(("WATCHDOG_PID".into(), "1".into()));
    let child = spawn(&["run"], &vars);
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .get(format!("http://127.0.0.1:{port}/ready"))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (code, stderr) = wait_exit(child, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("watchdog"), "{stderr}");
}

/// `meter-sync <args>` with no configuration at all; its exit code and stdout.
fn run_bare(args: &[&str]) -> (Option<i32>, String) {
    let output = agent(args, &[]).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

#[test]
fn the_shipped_completions_are_what_the_command_line_generates() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, script) = run_bare(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}");
        let parsed: clap_complete::Shell = shell.parse().unwrap();
        let file = meter_sync::surface::cli::manual::completion_file(parsed);
        let shipped =
            std::fs::read_to_string(format!("{SHIPPED}/completions/{file}")).unwrap_or_default();
        assert!(
            shipped == script,
            "deploy/completions/{file} is not current: `meter-sync completions {shell} > deploy/completions/{file}`"
        );
    }
}

#[test]
fn bash_completes_the_subcommands_and_their_flags() {
    let script = format!("{SHIPPED}/completions/meter-sync.bash");
    // What bash offers after `meter-sync qu<TAB>` and `meter-sync quarantine release --<TAB>`.
    let complete = |words: &str, current: usize| {
        let program = format!(
            "source {script}; \
             f=$(complete -p meter-sync | sed -E 's/.* -F ([^ ]+) .*/\\1/'); \
             COMP_WORDS=({words}); COMP_CWORD={current}; \
             COMP_LINE=\"{words}\"; COMP_POINT=${{#COMP_LINE}}; \
             \"$f\" meter-sync \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let output = Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(complete("meter-sync qu", 1), ["quarantine"]);
    let flags = complete("meter-sync quarantine release --", 3);
    for flag in ["--all", "--id", "--json"] {
        assert!(
            flags.iter().any(|f| f == flag),
            "{flag} not offered: {flags:?}"
        );
    }
    let shells = complete("meter-sync completions ", 2);
    assert!(shells.iter().any(|s| s == "zsh"), "{shells:?}");
}

#[test]
fn the_shipped_manual_pages_are_what_the_command_line_generates() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_bare(&["manpages", &dir.path().display().to_string()]);
    assert_eq!(code, Some(0), "{out}");
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let generated = names(dir.path());
    let shipped_dir = std::path::Path::new(SHIPPED).join("man");
    assert_eq!(
        names(&shipped_dir),
        generated,
        "deploy/man is not current: `meter-sync manpages deploy/man`"
    );
    for name in &generated {
        assert!(
            std::fs::read(dir.path().join(name)).unwrap()
                == std::fs::read(shipped_dir.join(name)).unwrap(),
            "deploy/man/{name} is not current: `meter-sync manpages deploy/man`"
        );
    }
    // The main page names every subcommand's page, and the environment section every key.
    let main = std::fs::read_to_string(dir.path().join("meter-sync.1")).unwrap();
    assert!(main.contains("\n.TH meter-sync 1 "), "{main}");
    for page in generated.iter().filter(|n| n.matches('-').count() == 2) {
        // roff writes a hyphen as `\-`.
        let named = format!("{}(1)", page.trim_end_matches(".1")).replace('-', "\\-");
        assert!(main.contains(&named), "meter-sync.1 does not name {named}");
    }
    let environment = &main[main.find(".SH ENVIRONMENT").unwrap()..];
    for key in meter_sync::config::KEYS {
        assert!(
            environment.contains(&key.name.replace('_', "\\_")) || environment.contains(key.name),
            "{} not in ENVIRONMENT",
            key.name
        );
    }
    assert!(generated.contains(&"meter-sync-quarantine-release.1".to_string()));
    // Each page is well-formed roff: groff (Debian's groff-base, which man uses) warns of none.
    for name in &generated {
        let output = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(dir.path().join(name))
            .output()
            .expect("groff (apt-get install groff-base)");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_embedded_chart_library_is_the_npm_package() {
    let vendor = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/vendor");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vendor.join("package.json")).unwrap())
            .unwrap();
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vendor.join("package-lock.json")).unwrap())
            .unwrap();
    let pinned = manifest["dependencies"]["uplot"].as_str().unwrap();
    assert_eq!(lock["packages"]["node_modules/uplot"]["version"], pinned);
    let installed = vendor.join("node_modules/uplot");
    if !installed.exists() {
        assert!(
            std::env::var_os("METER_SYNC_BROWSER_TEST").is_none(),
            "METER_SYNC_BROWSER_TEST is set but assets/vendor/node_modules is missing (npm ci --prefix assets/vendor)"
        );
        eprintln!("chart library check skipped: npm ci --prefix assets/vendor first");
        return;
    }
    let version: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(installed.join("package.json")).unwrap())
            .unwrap();
    assert_eq!(version["version"], pinned);
    for (shipped, from) in [
        ("uPlot.iife.min.js", "dist/uPlot.iife.min.js"),
        ("uPlot.min.css", "dist/uPlot.min.css"),
        ("LICENSE", "LICENSE"),
    ] {
        assert!(
            std::fs::read(vendor.join(shipped)).unwrap()
                == std::fs::read(installed.join(from)).unwrap(),
            "assets/vendor/{shipped} is not uplot {pinned}'s {from}: npm run --prefix assets/vendor vendor"
        );
    }
}
