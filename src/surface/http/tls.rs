//! HTTPS for the API (`API_TLS_CERT`, `API_TLS_KEY`): the certificate chain and private key
//! read from PEM files into a rustls server configuration, each failure naming its key, file
//! and cause. With TLS on, the port speaks only TLS, so the bearer token never crosses the
//! network in the clear. [`Serving`] is the one check of how the API will be served (bind
//! rule, then TLS), for `run` and `check` alike.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::{ApiTls, Config};
use crate::error::chain;

/// How `run` serves the API, as the configuration asks: HTTPS when `tls` is set.
pub struct Serving {
    pub tls: Option<Arc<ServerConfig>>,
}

impl Serving {
    /// The configuration's API checked as `run` would serve it: the bind rule, then the TLS
    /// files read and matched. The error is for the operator, naming the keys at fault.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        super::check_bind(config)?;
        let tls = match &config.api_tls {
            Some(tls) => Some(server_config(tls).map_err(|e| chain(&e))?),
            None => None,
        };
        Ok(Self { tls })
    }

    /// The API's address as a URL: `https://` or `http://`.
    pub fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }
}

/// Why the API's TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("API_TLS_CERT={path}: cannot read the certificate chain")]
    Certificate {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "API_TLS_CERT={path}: the file holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate { path: String },
    #[error("API_TLS_KEY={path}: cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM)")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("API_TLS_CERT and API_TLS_KEY do not make a usable server identity (does the key belong to the certificate?)")]
    Mismatch(#[source] rustls::Error),
}

/// The rustls configuration of the API's HTTPS: HTTP/1.1 and HTTP/2 by ALPN.
pub fn server_config(tls: &ApiTls) -> Result<Arc<ServerConfig>, ApiTlsError> {
    let shown = |p: &Path| p.display().to_string();
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ApiTlsError::Certificate {
            path: shown(&tls.cert),
            source,
        })?;
    if chain.is_empty() {
        return Err(ApiTlsError::NoCertificate {
            path: shown(&tls.cert),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|source| ApiTlsError::Key {
        path: shown(&tls.key),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ApiTlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(ApiTlsError::Mismatch)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
