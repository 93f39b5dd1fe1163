//! TLS for database connections with rustls (ring), following libpq's `sslmode` meanings.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DbConfig, Side, SslMode};

/// Why a TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{side} database: cannot read CA file {path}")]
    ReadCa {
        side: Side,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{side} database: CA file {path} holds no usable certificate")]
    EmptyCa { side: Side, path: String },
    #[error("{side} database: no trusted root certificates (set the SSLROOTCERT key)")]
    NoRoots { side: Side },
    #[error("{side} database: TLS setup failed")]
    Rustls {
        side: Side,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// Which database's TLS settings are at fault.
    pub fn side(&self) -> Side {
        match self {
            TlsError::ReadCa { side, .. }
            | TlsError::EmptyCa { side, .. }
            | TlsError::NoRoots { side }
            | TlsError::Rustls { side, .. } => *side,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connector for `db`: verification as its `sslmode` asks. With `disable`, the connector
/// is never used because the driver is told not to negotiate TLS.
pub fn connector(db: &DbConfig) -> Result<MakeRustlsConnect, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            side: db.side,
            source,
        })?;
    let config = match db.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(db)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::Rustls {
                    side: db.side,
                    source: rustls::Error::General(e.to_string()),
                })?;
            if db.sslmode == SslMode::VerifyCa {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            } else {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            }
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The driver's own mode: whether to try or insist on TLS.
pub fn driver_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    }
}

fn roots(db: &DbConfig) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match &db.sslrootcert {
        Some(path) => {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
                side: db.side,
                path: shown.clone(),
                source,
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                match cert {
                    Ok(cert) => {
                        if let Err(e) = store.add(cert) {
                            tracing::warn!(side = %db.side, path = %shown, error = %e, "a certificate of the CA file is not usable; skipped");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(side = %db.side, path = %shown, error = %e, "a PEM section of the CA file cannot be read; skipped");
                    }
                }
            }
            if store.is_empty() {
                return Err(TlsError::EmptyCa {
                    side: db.side,
                    path: shown,
                });
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(TlsError::NoRoots { side: db.side });
            }
        }
    }
    Ok(store)
}

/// `prefer`/`require`: encrypt, but accept any certificate (libpq's meaning of these modes).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
