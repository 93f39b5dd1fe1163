//! HTTPS for the API (`API_TLS_CERT`, `API_TLS_KEY`) with a CA and server certificate generated
//! here (rcgen): the port speaks only TLS, the token is taken over it, the page's own `https://`
//! origin may post; bad certificate files and half a configuration stop the start with an error
//! naming the key; beyond loopback TLS is required.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meter_sync::config::ApiTls;
use meter_sync::pgcluster::free_port;
use meter_sync::service::Service;
use meter_sync::surface::app::App;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::support::{agent, spawn, upload_env, wait_exit, TestEnv};

const TOKEN: &str = "a-token-of-24-characters";

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "meter-sync test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(
            dir.path().join("other.key"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `API_TLS_CERT` and `API_TLS_KEY` naming two of these files.
    fn files(&self, cert: &str, key: &str) -> Vec<(&'static str, String)> {
        vec![
            ("API_TLS_CERT", shown(&self.path(cert))),
            ("API_TLS_KEY", shown(&self.path(key))),
        ]
    }

    fn tls(&self) -> ApiTls {
        ApiTls {
            cert: self.path("server.crt"),
            key: self.path("server.key"),
        }
    }

    /// A client configuration that trusts this CA only.
    fn client(&self) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::pem::PemObject::from_pem_slice(self.ca.as_bytes()).unwrap())
            .unwrap();
        Https::trusting(roots)
    }
}

/// A minimal HTTPS/1.1 client (rustls with ring, as the service uses): one request per
/// connection, `Connection: close`, the status and body read to the end.
struct Https(tokio_rustls::TlsConnector);

impl Https {
    fn trusting(roots: rustls::RootCertStore) -> Self {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// `method path` on `localhost:port` with extra header lines; (status, body).
    async fn request(
        &self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> std::io::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = self.0.connect(name, tcp).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await?;
        let mut answer = Vec::new();
        // The server may close without a TLS close_notify once the body is sent.
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}

async fn serve_https(env: &TestEnv, pki: &Pki) -> (App, u16) {
    let mut config = env.config.clone();
    config.api_token = Some(meter_sync::config::Secret::new(TOKEN));
    config.api_tls = Some(pki.tls());
    let server = meter_sync::surface::http::tls::server_config(&pki.tls()).unwrap();
    let service = Service::new(
        config,
        meter_sync::profile::Profile::builtin_default().unwrap(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::start_with(service, listener, false, Some(server)).unwrap();
    let port = app.addr.port();
    (app, port)
}

#[tokio::test]
async fn the_api_speaks_only_tls_and_takes_the_token_over_it() {
    let (env, _profile) = upload_env("tls_api", &[("TENANT_ID", "1")]).await;
    let pki = Pki::new();
    let (app, port) = serve_https(&env, &pki).await;
    let https = pki.client();

    let (code, _) = https.request(port, "GET", "/health", &[]).await.unwrap();
    assert_eq!(code, 200);
    let (code, body) = https
        .request(port, "GET", "/api/local/sync-status", &[])
        .await
        .unwrap();
    assert_eq!(code, 200);
    // Chunked or not, the status's JSON is in the body.
    assert!(body.contains("\"local_db_connected\":true"), "{body}");

    // The token is needed and accepted, over TLS.
    let trigger = "/api/local/sync-trigger";
    let bearer = ("Authorization", format!("Bearer {TOKEN}"));
    let (code, _) = https.request(port, "POST", trigger, &[]).await.unwrap();
    assert_eq!(code, 401);
    let (code, body) = https
        .request(port, "POST", trigger, std::slice::from_ref(&bearer))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");

    // The page's own origin is https://; the same name over http:// is another origin.
    for (origin, expected) in [("https", 200), ("http", 403)] {
        let (code, body) = https
            .request(
                port,
                "POST",
                trigger,
                &[
                    bearer.clone(),
                    ("Origin", format!("{origin}://localhost:{port}")),
                ],
            )
            .await
            .unwrap();
        assert_eq!(code, expected, "Origin {origin}://: {body}");
    }

    // Plain HTTP gets no answer on the port: nothing is served in the clear.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the CA is refused at the handshake.
    let untrusting = Https::trusting(rustls::RootCertStore::empty());
    assert!(untrusting
        .request(port, "GET", "/health", &[])
        .await
        .is_err());
    app.stop().await;
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn bad_or_half_tls_settings_stop_the_start_with_an_error_naming_the_key() {
    let (env, _profile) = upload_env("tls_api_bad", &[]).await;
    let pki = Pki::new();
    let port = free_port().unwrap();
    let with = |extra: &[(&str, String)]| {
        let mut vars = env.env(&[("TENANT_ID", "1"), ("API_PORT", &port.to_string())]);
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        vars
    };
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("API_TLS_CERT", shown(&pki.path("server.crt")))],
            "API_TLS_KEY",
        ),
        (
            vec![("API_TLS_KEY", shown(&pki.path("server.key")))],
            "API_TLS_CERT",
        ),
        (
            pki.files("server.key", "server.key"),
            "holds no PEM certificate",
        ),
        (pki.files("missing.crt", "server.key"), "API_TLS_CERT="),
        (pki.files("server.crt", "server.crt"), "API_TLS_KEY="),
        (
            pki.files("server.crt", "other.key"),
            "does the key belong to the certificate?",
        ),
    ];
    for (extra, says) in cases {
        let (code, stderr) =
            wait_exit(spawn(&["run"], &with(&extra)), Duration::from_secs(30)).await;
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{extra:?} should say {says:?}: {stderr}"
        );
    }
    // `check` says the same before a start is tried.
    let check = |extra: Vec<(&str, String)>| {
        let vars = with(&extra);
        let output = agent(&["check"], &vars).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, out) = check(pki.files("server.crt", "other.key"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "HTTP API: FAILED: API_TLS_CERT and API_TLS_KEY do not make a usable server identity"
        ),
        "{out}"
    );
    let (code, out) = check(pki.files("server.crt", "server.key"));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("HTTP API: ok (https://127.0.0.1:{port})")),
        "{out}"
    );

    // Good files: `run` serves HTTPS on the port and says so.
    let mut good = pki.files("server.crt", "server.key");
    good.push(("SYNC_INTERVAL_SECONDS", "3600".to_string()));
    let vars = with(&good);
    let _agent = spawn(&["run"], &vars);
    let https = pki.client();
    let started = Instant::now();
    let answered = loop {
        if let Ok((code, _)) = https.request(port, "GET", "/ready", &[]).await {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never served HTTPS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answered == 200 || answered == 503, "{answered}");
}

#[tokio::test]
async fn beyond_loopback_a_token_without_tls_is_refused() {
    let (env, _profile) = upload_env("tls_api_bind", &[]).await;
    let vars = env.env(&[("API_HOST", "0.0.0.0"), ("API_TOKEN", TOKEN)]);
    let (code, stderr) = wait_exit(spawn(&["run"], &vars), Duration::from_secs(30)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("API_HOST=0.0.0.0")
            && stderr.contains("API_TLS_CERT and API_TLS_KEY")
            && !stderr.contains("set API_TOKEN"),
        "{stderr}"
    );
}
