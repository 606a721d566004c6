//! Checks of single qkdpfd.conf values (parent, pure). Each returns the
//! checked value or what was expected, in the config's own words; the
//! caller prefixes the key and adds the position.

use super::Got;
use crate::url::{Kind, Url};
use base64::Engine;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub(super) type Check<T> = Result<T, String>;

pub(super) fn text(g: Got) -> Check<String> {
    match g {
        Got::Str(s) => Ok(s.to_string()),
        _ => Err("expected a string".into()),
    }
}

/// A user or group name: non-empty, no blanks, no control characters.
pub(super) fn account(g: Got) -> Check<String> {
    let s = text(g).map_err(|_| "expected a user or group name (a string)".to_string())?;
    let ok = |c: char| c.is_ascii_graphic() && c != ':';
    if s.is_empty() || s.len() > 32 || !s.chars().all(ok) {
        return Err(format!("expected a user or group name, found {s:?}"));
    }
    Ok(s)
}

/// Kept as written: the parent opens it and reports its own errors.
pub(super) fn path(g: Got) -> Check<PathBuf> {
    let s = text(g).map_err(|_| "expected an absolute path (a string)".to_string())?;
    if !s.starts_with('/') || s.contains('\0') {
        return Err(format!("expected an absolute path, found {s:?}"));
    }
    Ok(PathBuf::from(s))
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn alternatives(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// One of a fixed set of words.
pub(super) fn choice<T: Copy>(opts: &'static [(&'static str, T)]) -> impl Fn(Got) -> Check<T> {
    move |g| {
        let found = match g {
            Got::Str(s) => opts.iter().find(|(n, _)| *n == s),
            _ => None,
        };
        found.map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<&str> = opts.iter().map(|(n, _)| *n).collect();
            format!("expected {}", alternatives(&names))
        })
    }
}

/// An integer in `lo..=hi`, written `lo..hi` as DESIGN does.
pub(super) fn boolean(g: Got) -> Check<bool> {
    match g {
        Got::Bool(b) => Ok(b),
        _ => Err("expected true or false".into()),
    }
}

pub(super) fn int(lo: i64, hi: i64) -> impl Fn(Got) -> Check<i64> {
    move |g| match g {
        Got::Int(i) if (lo..=hi).contains(&i) => Ok(i),
        _ => Err(format!("expected an integer {lo}..{hi}")),
    }
}

/// A seed: any integer TOML can hold that is not negative.
pub(super) fn seed(g: Got) -> Check<u64> {
    match g {
        Got::Int(i) if i >= 0 => Ok(i as u64),
        _ => Err("expected a non-negative integer".into()),
    }
}

/// One end of a range of numbers.
#[derive(Clone, Copy)]
pub(super) enum End {
    Incl(f64),
    Excl(f64),
    Open,
}

fn range_words(lo: End, hi: End) -> String {
    if let (End::Incl(l), End::Incl(h)) = (lo, hi) {
        return format!("from {l} to {h}");
    }
    let lo = match lo {
        End::Incl(x) => Some(format!("at least {x}")),
        End::Excl(x) => Some(format!("above {x}")),
        End::Open => None,
    };
    let hi = match hi {
        End::Incl(x) => Some(format!("at most {x}")),
        End::Excl(x) => Some(format!("below {x}")),
        End::Open => None,
    };
    let words: Vec<String> = lo.into_iter().chain(hi).collect();
    words.join(" and ")
}

/// A number (integers welcome) between `lo` and `hi`; NaN never passes.
pub(super) fn float(lo: End, hi: End) -> impl Fn(Got) -> Check<f64> {
    move |g| {
        let x = match g {
            Got::Float(x) => x,
            Got::Int(i) => i as f64,
            _ => f64::NAN,
        };
        let lo_ok = match lo {
            End::Incl(l) => x >= l,
            End::Excl(l) => x > l,
            End::Open => x.is_finite(),
        };
        let hi_ok = match hi {
            End::Incl(h) => x <= h,
            End::Excl(h) => x < h,
            End::Open => x.is_finite(),
        };
        if lo_ok && hi_ok {
            Ok(x)
        } else {
            Err(format!("expected a number {}", range_words(lo, hi)))
        }
    }
}

/// `"ip:port"` with a port other than 0.
pub(super) fn socket_addr(g: Got) -> Check<SocketAddr> {
    let expected = || "expected \"ip:port\" such as \"127.0.0.1:8072\" or \"[::]:8071\"";
    let Got::Str(s) = g else {
        return Err(expected().into());
    };
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        _ => Err(format!("{}, found {s:?}", expected())),
    }
}

pub(super) fn ip(g: Got) -> Check<IpAddr> {
    let Got::Str(s) = g else {
        return Err("expected an IP address literal (a string)".into());
    };
    match s.parse::<IpAddr>() {
        // pf and nft match the IPv4 form; the mapped one would never match.
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
            let v4 = v6
                .to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            Err(format!("expected {v4} rather than the IPv4-mapped {s:?}"))
        }
        Ok(a) => Ok(a),
        Err(_) => Err(format!("expected an IP address literal, found {s:?}")),
    }
}

/// A URL as [`crate::url`] checks it for the engine that will use it.
fn url(g: Got, kind: Kind, expected: &str) -> Check<String> {
    let Got::Str(s) = g else {
        return Err(format!("expected {expected}"));
    };
    match Url::parse(s, kind) {
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

pub(super) fn https_url(g: Got) -> Check<String> {
    url(g, Kind::Kme, "an https:// URL")
}

pub(super) fn http_url(g: Got) -> Check<String> {
    url(g, Kind::Qber, "an http:// or https:// URL")
}

/// `^[a-z][a-z0-9_]{0,30}$`: link names and the anchor, used in pf anchor
/// paths, nft chain names and log labels.
pub(crate) fn valid_name(s: &str) -> bool {
    crate::conf::valid_link_name(s)
}

pub(super) const NAME_RULE: &str =
    "a lowercase letter then at most 30 of a-z, 0-9 and _ (^[a-z][a-z0-9_]{0,30}$)";

pub(super) fn name(g: Got) -> Check<String> {
    match g {
        Got::Str(s) if valid_name(s) => Ok(s.to_string()),
        Got::Str(s) => Err(format!("expected {NAME_RULE}, found {s:?}")),
        _ => Err(format!("expected {NAME_RULE}")),
    }
}

/// `lo..=hi` characters, each accepted by `ok`.
fn ascii_id(g: Got, lo: usize, hi: usize, ok: fn(&u8) -> bool, what: &str) -> Check<String> {
    match g {
        Got::Str(s) if (lo..=hi).contains(&s.len()) && s.bytes().all(|b| ok(&b)) => {
            Ok(s.to_string())
        }
        Got::Str(s) => Err(format!("expected {what}, found {s:?}")),
        _ => Err(format!("expected {what}")),
    }
}

pub(super) fn sae_id(g: Got) -> Check<String> {
    let what = "1 to 64 printable ASCII characters without spaces";
    ascii_id(g, 1, 64, u8::is_ascii_graphic, what)
}

pub(super) fn qber_id(g: Got) -> Check<String> {
    let printable = |b: &u8| *b == b' ' || b.is_ascii_graphic();
    ascii_id(g, 1, 128, printable, "1 to 128 printable ASCII characters")
}

pub(super) fn wg_interface(g: Got) -> Check<String> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    ascii_id(
        g,
        1,
        15,
        ok,
        "an interface name of 1 to 15 of A-Z, a-z, 0-9, _ . -",
    )
}

/// A WireGuard public key: base64 of 32 bytes.
pub(super) fn wg_key(g: Got) -> Check<String> {
    let what = "a WireGuard public key (base64 of 32 bytes)";
    let Got::Str(s) = g else {
        return Err(format!("expected {what}"));
    };
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(k) if k.len() == 32 => Ok(s.to_string()),
        _ => Err(format!("expected {what}, found {s:?}")),
    }
}

/// A far qkdpfd's peering key: the `.pub` line `signify -G` writes,
/// decoded as the parent decodes it when it starts the link, so that a bad
/// one is reported here with its position, with every other error.
pub(super) fn peer_pubkey(g: Got) -> Check<String> {
    let what = "a signify public key line (base64 of \"Ed\", key number and Ed25519 key)";
    let Got::Str(s) = g else {
        return Err(format!("expected {what}"));
    };
    match crate::policy::signify::pubkey_from_base64(s.trim()) {
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(format!("expected {what}, found {s:?}: {e}")),
    }
}

/// `"host:port"` or `"[v6]:port"`; the parent resolves the host later.
pub(super) fn peer(g: Got) -> Check<String> {
    let expected = "expected \"host:port\" or \"[v6]:port\"";
    let Got::Str(s) = g else {
        return Err(expected.into());
    };
    let port_ok = |p: &str| p.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = |h: &str| {
        let c_ok = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
        !h.is_empty() && h.len() <= 253 && h.chars().all(c_ok) && crate::url::read_as_written(h)
    };
    let v6 = |h: &str| h.parse::<std::net::Ipv6Addr>().ok();
    // An IPv4-mapped address would pick the IPv6-only peering socket,
    // which can never send to it.
    if let Some(v4) = (s.strip_prefix('[').and_then(|r| r.split_once("]:")))
        .and_then(|(h, _)| v6(h)?.to_ipv4_mapped())
    {
        return Err(format!(
            "{expected}: write {v4} rather than the IPv4-mapped {s:?}"
        ));
    }
    // A link-local address names no interface here (no zone): every
    // datagram to it would fail to leave.
    let link_local = |a: std::net::Ipv6Addr| (a.segments()[0] & 0xffc0) == 0xfe80;
    if let Some(a) = (s.strip_prefix('[').and_then(|r| r.split_once("]:")))
        .and_then(|(h, _)| v6(h))
        .filter(|a| link_local(*a))
    {
        return Err(format!(
            "{expected}: {a} is link-local, which names no interface; use a global or unique-local address"
        ));
    }
    let ok = match s.strip_prefix('[') {
        Some(rest) => rest
            .split_once("]:")
            .is_some_and(|(h, p)| v6(h).is_some() && port_ok(p)),
        None => s
            .rsplit_once(':')
            .is_some_and(|(h, p)| host_ok(h) && port_ok(p)),
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{expected}, found {s:?}"))
    }
}

/// A JSON pointer (RFC 6901): empty or starting with `/`; we want a member.
pub(super) fn json_pointer(g: Got) -> Check<String> {
    match g {
        Got::Str(s) if s.starts_with('/') => Ok(s.to_string()),
        Got::Str(s) => Err(format!(
            "expected a JSON pointer starting with \"/\", found {s:?}"
        )),
        _ => Err("expected a JSON pointer starting with \"/\"".into()),
    }
}

/// A duration in `lo..=hi`.
pub(super) fn duration(lo: Duration, hi: Duration) -> impl Fn(Got) -> Check<Duration> {
    use crate::duration::format;
    move |g| {
        let range = || format!("expected a duration from {} to {}", format(lo), format(hi));
        let Got::Str(s) = g else {
            return Err(range());
        };
        let d = crate::duration::parse(s)?;
        if (lo..=hi).contains(&d) {
            Ok(d)
        } else {
            Err(format!("{}, found {s:?}", range()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "dr", "link_2", &format!("a{}", "b".repeat(30))] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Dr",
            "1a",
            "_a",
            "a-b",
            "a.b",
            &format!("a{}", "b".repeat(31)),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn peers() {
        for ok in [
            "198.51.100.2:8071",
            "gw.example:1",
            "[2001:db8::2]:8071",
            "a1.example:1",
            "0xcafe.example:1",
        ] {
            assert!(peer(Got::Str(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "198.51.100.2",
            // Numbers getaddrinfo would read other than as written.
            "198.51.100:8071",
            "3325256706:8071",
            "010.0.0.1:8071",
            "0x7f.1:8071",
            "2001:db8::2:8071",
            "[2001:db8::2]",
            "h:0",
            ":80",
            "a b:1",
            "[::ffff:198.51.100.2]:8071",
            "[fe80::2]:8071",
            "[fe80::2%em0]:8071",
        ] {
            assert!(peer(Got::Str(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        let f = float(End::Excl(0.0), End::Incl(1.0));
        assert_eq!(f(Got::Int(1)), Ok(1.0));
        assert!(f(Got::Float(0.0)).is_err());
        assert!(f(Got::Float(f64::NAN)).is_err());
        let msg = f(Got::Float(2.0)).unwrap_err();
        assert_eq!(msg, "expected a number above 0 and at most 1");
        let g = float(End::Incl(0.0), End::Excl(1.0));
        assert_eq!(
            g(Got::Int(2)).unwrap_err(),
            "expected a number at least 0 and below 1"
        );
        assert!(float(End::Excl(0.0), End::Open)(Got::Float(f64::INFINITY)).is_err());
        assert_eq!(
            int(1, 65535)(Got::Int(0)).unwrap_err(),
            "expected an integer 1..65535"
        );
    }

    #[test]
    fn words() {
        assert_eq!(
            alternatives(&["keep", "lockdown"]),
            "\"keep\" or \"lockdown\""
        );
        assert_eq!(alternatives(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }

    #[test]
    fn wg_keys() {
        let k = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(wg_key(Got::Str(k)).is_ok());
        assert!(wg_key(Got::Str("AAAA")).is_err());
        assert!(wg_key(Got::Str(&k[1..])).is_err());
    }
}
