//! Where the load may go: loopback only. Every address a name resolves to is checked, for the
//! target given on the command line and for every address a redirect names.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use crate::error::{BenchError, Result};

/// 127.0.0.0/8, ::1, and ::ffff:127.0.0.0/104 (an IPv4 loopback address written as IPv6).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// `HOST:PORT` as a redirect carries it (RFC 6120 §4.9.3.19: IPv6 in brackets).
pub fn split_host_port(s: &str) -> Result<(String, u16)> {
    let bad = || BenchError::Protocol(format!("{s:?} is not HOST:PORT"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(bad)?
    };
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok((host.to_owned(), port))
}

/// Resolves names once and remembers them (a run connects to a handful of addresses, tens of
/// thousands of times).
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), SocketAddr>>,
}

impl Resolver {
    /// The first address of `host:port`, after checking that every address it has is loopback.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr> {
        let key = (host.to_owned(), port);
        if let Some(a) = self.cache.lock().ok().and_then(|c| c.get(&key).copied()) {
            return Ok(a);
        }
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| BenchError::Resolve(host.to_owned(), e))?
                .collect(),
        };
        let Some(first) = addrs.first().copied() else {
            return Err(BenchError::Resolve(
                host.to_owned(),
                std::io::Error::other("no address"),
            ));
        };
        if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(BenchError::NotLoopback(format!("{host} ({})", bad.ip())));
        }
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, first);
        }
        Ok(first)
    }

    /// A redirect's `HOST:PORT`, resolved and checked.
    pub async fn resolve_host_port(&self, s: &str) -> Result<SocketAddr> {
        let (h, p) = split_host_port(s)?;
        self.resolve(&h, p).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        for ok in ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.2"] {
            assert!(is_loopback(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "192.168.1.1",
            "0.0.0.0",
            "::",
            "8.8.8.8",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn host_port_as_redirects_write_it() {
        assert_eq!(
            split_host_port("127.0.0.1:5322").unwrap(),
            ("127.0.0.1".into(), 5322)
        );
        // RFC 6120 §4.9.3.19 example form.
        assert_eq!(
            split_host_port("[2001:db8::ea7:ed]:9090").unwrap(),
            ("2001:db8::ea7:ed".into(), 9090)
        );
        assert_eq!(
            split_host_port("localhost:5222").unwrap(),
            ("localhost".into(), 5222)
        );
        for bad in [
            "127.0.0.1",
            "::1:5222",
            "[::1]5222",
            ":5222",
            "host:port",
            "[::1]:99999",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn refuses_addresses_off_loopback() {
        let r = Resolver::default();
        assert!(matches!(
            r.resolve("10.1.2.3", 5222).await,
            Err(BenchError::NotLoopback(_))
        ));
        assert!(matches!(
            r.resolve_host_port("[2001:db8::1]:5222").await,
            Err(BenchError::NotLoopback(_))
        ));
        assert_eq!(
            r.resolve("::1", 5222).await.unwrap(),
            "[::1]:5222".parse().unwrap()
        );
    }
}
