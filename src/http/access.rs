//! Who may talk to the local server: the `Host` a request names (against DNS rebinding) and
//! the web origins granted cross-origin reads (CORS).
//!
//! Pure: header values in, verdicts out. The server answers only requests whose `Host` is
//! `localhost`, a loopback address or the address the request came in on, and grants no
//! other origin unless it was named (never for a private stream: see the viewer).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Whether a request's `Host` value names this server: `localhost`, a loopback address, or
/// `local` (the address the connection reached), with or without a port.
///
/// A DNS-rebinding page reaches the server under its own domain name, so any name other than
/// `localhost` is refused. The port is not compared, so that a forwarded port (an SSH tunnel)
/// still works: a page's origin is named by its host, and only names can be rebound.
pub fn host_allowed(host: &str, local: SocketAddr) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.to_canonical() == local.ip().to_canonical(),
        Err(_) => false,
    }
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`), or `None` when
/// the value is malformed.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        // A bracketed name must be an IPv6 address.
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (inside, None),
            _ => (inside, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            // An unbracketed IPv6 address is not a valid Host.
            Some((_, port)) if port.contains(':') => return None,
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        port.parse::<u16>().ok()?;
    }
    (!name.is_empty()).then_some(name)
}

/// A web origin granted cross-origin reads (`--allow-origin`), as a browser writes it in the
/// `Origin` header: `scheme://host[:port]`, lower case, default port left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin(String);

/// Why an `--allow-origin` value is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not `http://` or `https://`.
    #[error("an origin starts with http:// or https:// (e.g. https://example.org)")]
    Scheme,
    /// A path, query, fragment or user name after the host.
    #[error("an origin is only scheme://host[:port], with no path, query or user")]
    Extra,
    /// No host, or a host with characters no host name has.
    #[error("an origin needs a host name or address")]
    Host,
    /// A port that is not a number from 1 to 65535.
    #[error("the port must be a number from 1 to 65535")]
    Port,
}

impl FromStr for AllowedOrigin {
    type Err = OriginError;

    fn from_str(text: &str) -> Result<Self, OriginError> {
        let text = text.trim().to_ascii_lowercase();
        let (scheme, rest, default_port) = if let Some(rest) = text.strip_prefix("http://") {
            ("http", rest, "80")
        } else if let Some(rest) = text.strip_prefix("https://") {
            ("https", rest, "443")
        } else {
            return Err(OriginError::Scheme);
        };
        // A browser never sends a trailing slash, but people paste one.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(OriginError::Extra);
        }
        let (name, port) = match authority.rsplit_once(':') {
            Some((name, port)) if !name.starts_with('[') || name.ends_with(']') => {
                (name, Some(port))
            }
            _ => (authority, None),
        };
        let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if !name_ok {
            return Err(OriginError::Host);
        }
        match port {
            None => Ok(Self(format!("{scheme}://{name}"))),
            Some(port) => {
                let number = (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| port.parse::<u16>().ok())
                    .flatten()
                    .filter(|&p| p != 0)
                    .ok_or(OriginError::Port)?;
                if port.trim_start_matches('0') == default_port {
                    Ok(Self(format!("{scheme}://{name}")))
                } else {
                    Ok(Self(format!("{scheme}://{name}:{number}")))
                }
            }
        }
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The origins a server grants cross-origin reads to; none by default.
///
/// The viewer's watch page and the broadcaster's dashboard are served by the same server, so
/// they are same-origin and need no grant; any other page the user has open would otherwise
/// be able to read the playlist, the segments and `/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrossOrigin {
    granted: Vec<AllowedOrigin>,
}

impl CrossOrigin {
    /// Grants nothing: only same-origin pages can read responses.
    pub fn none() -> Self {
        Self::default()
    }

    /// Grants the named origins.
    pub fn granted(origins: Vec<AllowedOrigin>) -> Self {
        Self { granted: origins }
    }

    /// Whether any origin is granted (responses then vary by `Origin`).
    pub fn grants_any(&self) -> bool {
        !self.granted.is_empty()
    }

    /// Whether a request's `Origin` value is one of the granted origins (compared as a browser
    /// writes it; case-insensitively).
    pub fn grants(&self, origin: &str) -> bool {
        self.granted
            .iter()
            .any(|granted| granted.0.eq_ignore_ascii_case(origin))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_local_address_are_this_server() {
        let local: SocketAddr = "192.168.1.5:8080".parse().unwrap();
        for good in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.3.4.5:1",
            "[::1]",
            "[::1]:8080",
            "192.168.1.5:8080",
            // A forwarded port: only the name matters.
            "localhost:9999",
        ] {
            assert!(host_allowed(good, local), "{good}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "foo.localhost",
            "192.168.1.6:8080",
            "::1",
            "[::1",
            "[evil]:80",
            "localhost:",
            "localhost:port",
            "localhost:65536",
            "localhost:123456",
            "localhost:80:80",
            "[::1]x",
            ":8080",
        ] {
            assert!(!host_allowed(bad, local), "{bad}");
        }
        // Listening on every address: the address the connection came in on is named.
        let v6: SocketAddr = "[2001:db8::7]:8080".parse().unwrap();
        assert!(host_allowed("[2001:db8::7]:8080", v6));
        assert!(!host_allowed("[2001:db8::8]:8080", v6));
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:8080".parse().unwrap();
        assert!(host_allowed("10.0.0.2:8080", mapped));
    }

    #[test]
    fn origins_are_written_as_browsers_send_them() {
        let parse = |s: &str| s.parse::<AllowedOrigin>().map(|o| o.to_string());
        assert_eq!(
            parse("https://Example.org"),
            Ok("https://example.org".into())
        );
        assert_eq!(
            parse("https://example.org/"),
            Ok("https://example.org".into())
        );
        assert_eq!(
            parse("https://example.org:443"),
            Ok("https://example.org".into())
        );
        assert_eq!(
            parse("http://example.org:80"),
            Ok("http://example.org".into())
        );
        assert_eq!(
            parse("http://example.org:443"),
            Ok("http://example.org:443".into())
        );
        assert_eq!(
            parse("http://127.0.0.1:3000"),
            Ok("http://127.0.0.1:3000".into())
        );
        assert_eq!(parse("http://[::1]:3000"), Ok("http://[::1]:3000".into()));
        assert_eq!(parse("*"), Err(OriginError::Scheme));
        assert_eq!(parse("null"), Err(OriginError::Scheme));
        assert_eq!(parse("ftp://example.org"), Err(OriginError::Scheme));
        assert_eq!(parse("https://example.org/page"), Err(OriginError::Extra));
        assert_eq!(parse("https://user@example.org"), Err(OriginError::Extra));
        assert_eq!(parse("https://"), Err(OriginError::Host));
        assert_eq!(parse("https://exa mple.org"), Err(OriginError::Host));
        assert_eq!(parse("https://[nope]:1"), Err(OriginError::Host));
        assert_eq!(parse("https://example.org:0"), Err(OriginError::Port));
        assert_eq!(parse("https://example.org:99999"), Err(OriginError::Port));
        assert_eq!(parse("https://example.org:"), Err(OriginError::Port));
    }

    #[test]
    fn only_named_origins_are_granted() {
        assert!(!CrossOrigin::none().grants("https://example.org"));
        assert!(!CrossOrigin::none().grants_any());
        let one = CrossOrigin::granted(vec!["https://example.org".parse().unwrap()]);
        assert!(one.grants("https://example.org"));
        assert!(one.grants("HTTPS://EXAMPLE.ORG"));
        assert!(!one.grants("https://example.org.evil"));
        assert!(!one.grants("http://example.org"));
        assert!(!one.grants("null"));
        assert!(!one.grants("*"));
    }
}
