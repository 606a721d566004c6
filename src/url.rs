//! The URLs qkdpfd.conf(5) names: a KME's base URL (`[kme.X] url`) and a
//! QBER source's (`[qber.X] url`). One parser for the config check, the
//! parent's resolver and the engine's two clients, so that `qkdpfd -n`
//! refuses, with its line and column, every URL the engine would refuse
//! at its start (three parsers did this before, each a little apart).
//!
//! The form is `scheme://host[:port][/path][?query]`: no user info, no
//! fragment, nothing but printable ASCII. A host is a name, a dotted quad
//! or a bracketed IPv6 literal; a port is 1 to 65535. Over https the host
//! must be one a certificate can name (rustls checks it against the KME's
//! or the source's certificate).
//!
//! A KME speaks https only, and its URL is a base the ETSI 014 paths go
//! under (`/api/v1/keys/...`): no query. A QBER source may be polled over
//! plain http only at the literal loopback addresses 127.0.0.1 and `[::1]`:
//! its value decides whether a link stays open, so a value that crosses a
//! network must come over TLS from the configured CA; a local agent on the
//! same host is the one exception.

use rustls_pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whose URL it is: the rules differ (see the module text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kme,
    Qber,
}

/// A checked URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// Without brackets for an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// A KME's base path without a trailing `/` (maybe empty); a QBER
    /// source's path and query, from its leading `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str, kind: Kind) -> Result<Url, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://").filter(|_| kind == Kind::Qber) {
            (false, r)
        } else if kind == Kind::Kme {
            return Err("must start with https://".into());
        } else {
            return Err("must start with https:// (or http:// on loopback)".into());
        };
        if rest.contains(['@', '#']) || !rest.chars().all(|c| c.is_ascii_graphic()) {
            return Err("must not hold user info, a fragment, spaces or controls".into());
        }
        if kind == Kind::Kme && rest.contains('?') {
            return Err("a KME's base URL takes no query".into());
        }
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        let (host, port) = host_port(authority, if https { 443 } else { 80 })?;
        if https && ServerName::try_from(host.as_str()).is_err() {
            return Err(format!("{host:?} cannot be named by a certificate"));
        }
        if !https && !loopback_literal(&host) {
            return Err(format!(
                "http:// is only allowed for 127.0.0.1 and [::1], not {host:?}; use https"
            ));
        }
        let path = match kind {
            Kind::Kme => path.trim_end_matches('/').to_string(),
            Kind::Qber if path.is_empty() => "/".to_string(),
            Kind::Qber if path.starts_with('?') => format!("/{path}"),
            Kind::Qber => path.to_string(),
        };
        Ok(Url {
            https,
            host,
            port,
            path,
        })
    }

    /// `host:port`, with brackets around an IPv6 literal (a Host header,
    /// a resolver's argument).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `host:port`, with brackets around an IPv6 literal.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host[:port]` or `[v6][:port]`, with `default_port` when none is named.
fn host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        match h.parse::<Ipv6Addr>() {
            Err(_) => return Err(format!("[{h}] is not an IPv6 address")),
            // OpenBSD has no IPv4-mapped addresses: it could never connect.
            Ok(a) if a.to_ipv4_mapped().is_some() => {
                let v4 = a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED);
                return Err(format!("write {v4} rather than the IPv4-mapped [{h}]"));
            }
            Ok(_) => {}
        }
        match p {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or("junk after ]")?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if !read_as_written(host) {
        return Err(format!("{host:?} is not a whole dotted quad"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("bad port {p:?} (1 to 65535)"))?,
    };
    Ok((host.to_string(), port))
}

/// Whether a resolver reads `host` as written: getaddrinfo reads
/// "198.51.100" as 198.51.0.100, "010.1.1.1" in octal and "0x7f.1" in hex,
/// so a host of numbers only must be a whole dotted quad.
pub fn read_as_written(host: &str) -> bool {
    let number = |l: &str| {
        let hex = l.strip_prefix("0x").or_else(|| l.strip_prefix("0X"));
        !l.is_empty()
            && (l.bytes().all(|b| b.is_ascii_digit())
                || hex.is_some_and(|x| x.bytes().all(|b| b.is_ascii_hexdigit())))
    };
    !host.split('.').all(number) || host.parse::<Ipv4Addr>().is_ok()
}

fn loopback_literal(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a == Ipv4Addr::LOCALHOST,
        Ok(IpAddr::V6(a)) => a == Ipv6Addr::LOCALHOST,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qber(s: &str) -> Result<Url, String> {
        Url::parse(s, Kind::Qber)
    }

    fn kme(s: &str) -> Result<Url, String> {
        Url::parse(s, Kind::Kme)
    }

    #[test]
    fn qber_urls() {
        let u = qber("https://qkd.example:8443/a/{qber_id}?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("qkd.example", 8443));
        assert_eq!(u.path, "/a/{qber_id}?x=1");
        assert_eq!(qber("https://h").unwrap().path, "/");
        assert_eq!(qber("https://h?a=1").unwrap().path, "/?a=1");
        assert_eq!(qber("http://127.0.0.1").unwrap().port, 80);
        assert_eq!(qber("https://h").unwrap().port, 443);
        assert_eq!(qber("http://[::1]:9/m").unwrap().host, "::1");
        assert_eq!(qber("http://[::1]:9/m").unwrap().authority(), "[::1]:9");
        for bad in [
            "ftp://h",
            "http://10.0.0.1/x",
            "http://localhost/x",
            "http://127.0.0.2/",
            "https://",
            "https://h:0",
            "https://h:65536",
            "https://h:",
            "https://u@h/",
            "https://h/a b",
            "https://h/#f",
            "https://[::1/",
            "https://[::1]x/",
            "https://[kme]/",
            "https://[::ffff:192.0.2.1]/",
            "https://::1/",
            "https://h_:x/",
            "https://198.51.100/",
            "https://010.0.0.1/",
            "http://0x7f.1/",
        ] {
            assert!(qber(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kme_urls() {
        let u = kme("https://kme.example:8443/a/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("kme.example", 8443, "/a")
        );
        let u = kme("https://[2001:db8::1]:9").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("2001:db8::1", 9, "")
        );
        assert_eq!(kme("https://192.0.2.1").unwrap().port, 443);
        for bad in [
            "http://h",
            "http://127.0.0.1",
            "https://",
            "https://h:0",
            "https://h:x",
            "https://u@h",
            "https://h?q",
            "https://h/p?q",
            "https://bad name",
        ] {
            assert!(kme(bad).is_err(), "{bad}");
        }
    }
}
