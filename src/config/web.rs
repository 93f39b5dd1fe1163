//! The names and origins the HTTP API answers to besides its own (`API_ALLOWED_HOSTS`,
//! `API_ALLOWED_ORIGINS`), and the parsing of an authority (`host[:port]`) both they and the
//! `Host` header use.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A host name or IP literal, normalised: ASCII lower case, IPv6 in brackets (`[::1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName(String);

impl HostName {
    /// The name of an IP address as it appears in a `Host` header.
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(v4.to_string()),
            IpAddr::V6(v6) => Self(format!("[{v6}]")),
        }
    }

    /// Whether this is an IP literal rather than a DNS name.
    pub fn is_ip(&self) -> bool {
        self.0.starts_with('[') || self.0.parse::<Ipv4Addr>().is_ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (the `Host` header's grammar, RFC 9110).
pub fn parse_authority(text: &str) -> Option<(HostName, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = v6.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (HostName(format!("[{ip}]")), port)
    } else {
        let (name, port) = match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return None;
        }
        let name = match name.parse::<Ipv4Addr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => name.to_ascii_lowercase(),
        };
        (HostName(name), port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// One entry of `API_ALLOWED_HOSTS`: a name, on any port unless one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pub name: HostName,
    pub port: Option<u16>,
}

impl AllowedHost {
    /// Whether a request's `Host` (its port defaulted to 80) is this entry.
    pub fn matches(&self, name: &HostName, port: u16) -> bool {
        self.name == *name && self.port.is_none_or(|p| p == port)
    }
}

/// A web origin (RFC 6454): scheme, host and port, the port defaulted from the scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    pub host: HostName,
    pub port: u16,
}

impl Origin {
    /// Parses an `Origin` header value or an `API_ALLOWED_ORIGINS` entry:
    /// `http://host[:port]` or `https://host[:port]`, nothing after the authority.
    pub fn parse(text: &str) -> Option<Self> {
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(text, "https://") {
            (true, rest)
        } else {
            (false, strip_prefix_ignore_case(text, "http://")?)
        };
        let (host, port) = parse_authority(rest)?;
        Some(Self {
            https,
            host,
            port: port.unwrap_or(if https { 443 } else { 80 }),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// A comma-separated list, each entry parsed by `parse`; blanks between commas are ignored and
/// an empty value is the empty list. `None` when any entry is invalid.
pub fn parse_list<T>(text: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(parse)
        .collect()
}

/// An `API_ALLOWED_HOSTS` entry.
pub fn parse_allowed_host(text: &str) -> Option<AllowedHost> {
    let (name, port) = parse_authority(text)?;
    Some(AllowedHost { name, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(text: &str) -> Option<(String, Option<u16>)> {
        parse_authority(text).map(|(h, p)| (h.to_string(), p))
    }

    #[test]
    fn authorities_parse_as_the_host_header_writes_them() {
        assert_eq!(authority("localhost"), Some(("localhost".into(), None)));
        assert_eq!(
            authority("LocalHost:3002"),
            Some(("localhost".into(), Some(3002)))
        );
        assert_eq!(
            authority("127.0.0.1:80"),
            Some(("127.0.0.1".into(), Some(80)))
        );
        assert_eq!(authority("[::1]:3002"), Some(("[::1]".into(), Some(3002))));
        assert_eq!(authority("[0:0:0:0:0:0:0:1]"), Some(("[::1]".into(), None)));
        for bad in [
            "",
            ":3002",
            "evil.example:",
            "evil.example:x",
            "evil.example:99999",
            "a b",
            "::1",
            "[::1",
            "[::1]x",
            "evil.example/path",
            "user@evil.example",
        ] {
            assert_eq!(authority(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn origins_default_their_port_from_the_scheme() {
        let origin = Origin::parse("HTTPS://Meter.Site").unwrap();
        assert_eq!(origin.to_string(), "https://meter.site:443");
        assert_eq!(
            Origin::parse("http://127.0.0.1:3002").unwrap().to_string(),
            "http://127.0.0.1:3002"
        );
        assert_eq!(
            Origin::parse("http://a.example:80"),
            Origin::parse("http://a.example")
        );
        for bad in [
            "null",
            "evil.example",
            "ftp://evil.example",
            "http://",
            "http://evil.example/",
            "http://evil.example/path",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lists_ignore_blanks_and_refuse_any_bad_entry() {
        let hosts = parse_list(" meter.site , ,proxy.lan:8443,", parse_allowed_host).unwrap();
        assert_eq!(hosts.len(), 2);
        assert!(hosts[0].matches(&HostName("meter.site".into()), 1234));
        assert!(hosts[1].matches(&HostName("proxy.lan".into()), 8443));
        assert!(!hosts[1].matches(&HostName("proxy.lan".into()), 80));
        assert_eq!(parse_list("", parse_allowed_host), Some(vec![]));
        assert_eq!(parse_list("ok.lan,http://bad", parse_allowed_host), None);
    }
}
