//! Hostile input: fuzzed profiles and configurations (no panic, every rejection a message),
//! malformed HTTP requests (a JSON 4xx, never a 5xx), and readings with extreme values
//! (uploaded exactly).

use meter_sync::config::{Config, Sources};
use meter_sync::profile::{Profile, DB_SYNC_PROCESS_PROFILE_TOML, DEFAULT_PROFILE_TOML};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::Value;

use crate::support::{proptest_config, rows_text, upload_env, READINGS_MULTISET};

/// Runs a pure (database-free) property with more cases than the database properties.
fn fuzz<T: std::fmt::Debug>(strategy: impl Strategy<Value = T>, case: impl Fn(T)) {
    let mut runner = TestRunner::new(proptest_config(500));
    if let Err(e) = runner.run(&strategy, |value| {
        case(value);
        Ok(())
    }) {
        panic!("{e}");
    }
}

/// A profile text with a few random edits: characters replaced, inserted or removed.
fn mutated_profile() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        Just(DEFAULT_PROFILE_TOML),
        Just(DB_SYNC_PROCESS_PROFILE_TOML)
    ];
    let edit = (any::<prop::sample::Index>(), 0u8..3, any::<char>());
    (base, prop::collection::vec(edit, 1..6)).prop_map(|(base, edits)| {
        let mut chars: Vec<char> = base.chars().collect();
        for (at, kind, c) in edits {
            let i = at.index(chars.len().max(1));
            match kind {
                0 if i < chars.len() => chars[i] = c,
                1 => chars.insert(i.min(chars.len()), c),
                _ if i < chars.len() => {
                    chars.remove(i);
                }
                _ => {}
            }
        }
        chars.into_iter().collect()
    })
}

#[test]
fn fuzzed_profiles_never_panic_and_every_rejection_says_why() {
    fuzz(
        prop_oneof![mutated_profile(), ".{0,400}".prop_map(String::from)],
        |text| match Profile::parse(&text, "fuzz") {
            Ok(profile) => assert!(!profile.entities.is_empty() || profile.readings.is_some()),
            Err(e) => {
                let message = e.to_string();
                assert!(message.len() > 10, "{message:?}");
                assert!(
                    message.contains("fuzz"),
                    "the origin is not named: {message}"
                );
            }
        },
    );
}

fn key_name() -> impl Strategy<Value = String> {
    let known: Vec<String> = meter_sync::config::KEYS
        .iter()
        .map(|k| k.name.to_string())
        .collect();
    prop_oneof![
        4 => prop::sample::select(known),
        1 => "[A-Z_]{1,20}".prop_map(String::from),
    ]
}

fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("-1".to_string()),
        Just("1e309".to_string()),
        Just("NaN".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("* * *".to_string()),
        Just("0.0.0.0".to_string()),
        "\\PC{0,40}".prop_map(String::from),
        "[0-9]{1,6}".prop_map(String::from),
    ]
}

#[test]
fn fuzzed_configurations_never_panic_and_name_the_key_they_reject() {
    let base = || {
        vec![
            ("POSTGRES_SYNC_DB".to_string(), "site".to_string()),
            ("POSTGRES_CLIENT_HOST".to_string(), "central".to_string()),
            ("POSTGRES_CLIENT_DB".to_string(), "client".to_string()),
        ]
    };
    fuzz(
        prop::collection::vec((key_name(), hostile_value()), 1..6),
        |pairs| {
            let mut env = base();
            env.extend(pairs.iter().cloned());
            match Config::load(&Sources {
                env,
                ..Sources::default()
            }) {
                Ok(_) => {}
                Err(e) => {
                    let message = e.to_string();
                    assert!(
                        pairs.iter().any(|(k, _)| message.contains(k.as_str()))
                            || message.contains("POSTGRES"),
                        "{message} does not name a key of {pairs:?}"
                    );
                    // A secret's value never appears in the message.
                    for (k, v) in &pairs {
                        if k == "API_TOKEN" || k.ends_with("PASSWORD") {
                            let shown = format!("{k}={v:?}");
                            assert!(
                                !message.contains(&shown) || v.chars().all(|c| c == '*'),
                                "{message} shows {k}"
                            );
                        }
                    }
                }
            }
        },
    );
}

#[tokio::test]
async fn malformed_http_requests_get_a_json_4xx_never_a_5xx() {
    let (env, profile) = upload_env("hostile_http", &[("TENANT_ID", "1")]).await;
    let (app, base) = crate::service::serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let long = "x".repeat(60_000);
    let gets = [
        "/api/local/sync-logs?limit=-1".to_string(),
        "/api/local/sync-logs?limit=1e9".to_string(),
        "/api/local/sync-logs?limit=%ZZ".to_string(),
        "/api/local/sync-logs?limit=1&limit=2".to_string(),
        "/api/local/sync-logs?sync_type=%FF%FE".to_string(),
        "/api/local/sync-logs?sync_type=upload%00".to_string(),
        format!("/api/local/sync-logs?sync_type={long}"),
        "/api/local/sync-status/../../etc/passwd".to_string(),
        "/api/local/%00".to_string(),
        "/api/local/sync-trigger?wait=maybe".to_string(),
    ];
    for path in &gets {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        let code = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            (400..500).contains(&code),
            "GET {}: {code}",
            &path[..path.len().min(80)]
        );
        assert!(
            body["message"].is_string(),
            "GET {}: {body}",
            &path[..path.len().min(80)]
        );
    }
    let posts = [
        ("/api/local/sync-trigger?wait=maybe", Vec::new()),
        ("/api/local/meter-sync-status", Vec::new()),
        ("/health", Vec::new()),
        ("/api/local/upload-trigger", vec![b'x'; 2 * 1024 * 1024]),
    ];
    for (path, body) in posts {
        let response = http
            .post(format!("{base}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&code), "POST {path}: {code}");
        assert!(body["message"].is_string(), "POST {path}: {body}");
    }
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let response = http
            .request(method.clone(), format!("{base}/api/local/sync-status"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method}");
    }
    // Still healthy after all that.
    let ok = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn extreme_reading_values_are_uploaded_exactly() {
    let (env, profile) = upload_env("hostile_values", &[]).await;
    let local = env.local.client().await;
    let long_unit = "u".repeat(50);
    let long_text = serde_json::json!({ "text": "é".repeat(100_000) }).to_string();
    let rows: [(&str, &str, &str, &str, Option<&str>); 7] = [
        (
            "M-\u{1}\u{7f}\u{feff}",
            "2026-01-01 00:00",
            "NaN",
            "kWh",
            Some(r#"{"note": "\u0001\u0002\ufffd"}"#),
        ),
        ("M-inf", "2026-01-01 00:01", "Infinity", "kWh", None),
        ("M-inf", "2026-01-01 00:02", "-Infinity", "kWh", None),
        ("M-big", "2026-01-01 00:03", "1e130000", "kWh", None),
        ("M-tiny", "2026-01-01 00:04", "1e-16000", "kWh", None),
        (
            "M-long",
            "2026-01-01 00:05",
            "1",
            &long_unit,
            Some(&long_text),
        ),
        (
            "M-ゼロ",
            "2026-01-01 00:06",
            "-0.0",
            "m³",
            Some(r#"{"emoji": "😀", "quote": "\"'; drop table x; --"}"#),
        ),
    ];
    for (meter, at, value, unit, metadata) in rows {
        local
            .execute(
                "insert into meter_readings (meter_id, timestamp, value, unit, metadata)
                 values ($1, $2::text::timestamp, $3::text::numeric, $4, $5::text::jsonb)",
                &[&meter, &at, &value, &unit, &metadata],
            )
            .await
            .unwrap();
    }
    let original = rows_text(&local, READINGS_MULTISET).await;
    assert_eq!(original.len(), 7);
    let report = crate::support::upload(&env, &profile).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(report.uploaded, 7);
    assert_eq!(report.rejected_count, 0);
    let remote = env.remote.client().await;
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, original);
}
