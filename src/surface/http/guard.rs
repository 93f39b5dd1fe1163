//! Browser safety of the local API. The service listens without a token on loopback, where the
//! site operator's browser also runs and visits other sites, so:
//! - every request must name the service by one of its own names in `Host` (a page that
//!   rebinds its DNS name to 127.0.0.1 still sends its own name), and
//! - a request that can change something, and every `/mcp` request, is refused when a browser
//!   says it comes from another origin (`Origin`, `Sec-Fetch-Site`); requests that carry neither
//!   header (curl, scripts, MCP clients) are what DESIGN.md section 6 documents and pass;
//! - every response tells the browser not to frame it, sniff it or send a referrer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::config::{parse_authority, AllowedHost, Config, HostName, Origin};

/// What the API answers to.
#[derive(Debug)]
pub struct Guard {
    /// The listening port: the loopback names and `API_HOST` are accepted on it only.
    port: u16,
    /// localhost, 127.0.0.1, [::1] and `API_HOST`.
    own: Vec<HostName>,
    /// Bound to every address (`0.0.0.0`, `::`): any IP literal on the port names this machine
    /// (an IP literal cannot be rebound to another site's name).
    any_ip: bool,
    hosts: Vec<AllowedHost>,
    origins: Vec<Origin>,
    /// Served over HTTPS (`API_TLS_CERT`): the own page's origin is `https://`.
    https: bool,
}

impl Guard {
    /// The guard of a service from `config` listening on `port`.
    pub fn new(config: &Config, port: u16) -> Self {
        let mut own: Vec<HostName> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .filter_map(|n| parse_authority(n).map(|(h, _)| h))
            .collect();
        own.push(HostName::of_ip(config.api_host));
        Self {
            port,
            own,
            any_ip: config.api_host.is_unspecified(),
            hosts: config.api_allowed_hosts.clone(),
            origins: config.api_allowed_origins.clone(),
            https: config.api_tls.is_some(),
        }
    }

    /// The port a `Host` without one means.
    fn default_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }

    fn host_allowed(&self, name: &HostName, port: u16) -> bool {
        let own = port == self.port && (self.own.contains(name) || (self.any_ip && name.is_ip()));
        own || self.hosts.iter().any(|h| h.matches(name, port))
    }

    /// The request's `Host` when it is one of the service's names; the refusal otherwise.
    fn host(&self, request: &Request) -> Result<(HostName, u16), ApiError> {
        let given = request
            .headers()
            .get(header::HOST)
            .map(|v| v.to_str().unwrap_or("(not text)").to_string())
            .or_else(|| request.uri().authority().map(|a| a.to_string()));
        let Some(given) = given else {
            return Err(forbidden(
                "forbidden_host",
                "the request names no Host; send the service's address in the Host header".into(),
            ));
        };
        match parse_authority(&given) {
            Some((name, port)) if self.host_allowed(&name, port.unwrap_or(self.default_port())) => {
                Ok((name, port.unwrap_or(self.default_port())))
            }
            _ => Err(forbidden(
                "forbidden_host",
                format!(
                    "Host {given:?} is not a name of this service (this protects the API from \
                     DNS rebinding); it answers to localhost, 127.0.0.1 and [::1] on port {}, \
                     and to API_HOST; add other names of this machine to API_ALLOWED_HOSTS",
                    self.port
                ),
            )),
        }
    }

    /// Refuses what a browser sends on behalf of a page of another origin.
    fn origin(&self, request: &Request, host: &HostName, port: u16) -> Result<(), ApiError> {
        let headers = request.headers();
        if let Some(value) = headers.get(header::ORIGIN) {
            let text = value.to_str().unwrap_or("(not text)");
            let origin = Origin::parse(text);
            let own = origin
                .as_ref()
                .is_some_and(|o| o.https == self.https && o.host == *host && o.port == port);
            if origin.as_ref().is_some_and(|o| self.origins.contains(o)) {
                return Ok(());
            }
            if !own {
                return Err(forbidden(
                    "forbidden_origin",
                    format!(
                        "a request from the web page of origin {text:?} is refused: only this \
                         service's own page may change something here; add the origin to \
                         API_ALLOWED_ORIGINS if the page is served from there (e.g. behind a \
                         TLS proxy)"
                    ),
                ));
            }
        }
        if let Some(value) = headers.get(HeaderName::from_static("sec-fetch-site")) {
            let site = value.to_str().unwrap_or("(not text)");
            if !matches!(site, "same-origin" | "none") {
                return Err(forbidden(
                    "forbidden_origin",
                    format!(
                        "a {site} request from a browser is refused (Sec-Fetch-Site: {site}): \
                         only this service's own page may change something here"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks `request` against every rule.
    pub fn check(&self, request: &Request) -> Result<(), ApiError> {
        let (host, port) = self.host(request)?;
        let path = request.uri().path();
        let changes = !matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if changes || path == "/mcp" || path.starts_with("/mcp/") {
            self.origin(request, &host, port)?;
        }
        Ok(())
    }
}

fn forbidden(error: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, error, message)
}

/// The page's policy: its own script and style files only, no frames, no forms, no plugins.
pub const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Headers on every response; a response without its own policy gets `frame-ancestors 'none'`.
fn harden(headers: &mut HeaderMap) {
    let fixed = [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
}

/// The middleware: refuses what the guard refuses, hardens every answer.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let mut response = match guard.check(&request) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tracing::info!(
                method = %request.method(),
                path = request.uri().path(),
                "{}",
                refused.body.message
            );
            refused.into_response()
        }
    };
    harden(response.headers_mut());
    response
}
