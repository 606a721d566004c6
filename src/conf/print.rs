//! `qkdpfd -nv`: the normalised configuration (parent and qkdctl, pure).
//!
//! A complete qkdpfd.conf with every default filled in, sections and keys in
//! a fixed order (daemon, policy, firewall, wireguard, peering, kme.*,
//! qber.*, link.*), absent optional keys left out. It parses back to the
//! same [`Config`] (the golden tests and the round trip test hold it to that).

use super::{
    Config, FirewallBackend, KmeConf, LinkConf, OnStop, QberConf, QberDriver, Role, SimLinkConf,
    WireguardBackend,
};
use std::fmt::Write;
use std::path::Path;

/// The normalised text of `c`.
pub fn normalised(c: &Config) -> String {
    let mut out = Out(String::new());
    daemon(&mut out, c);
    policy(&mut out, c);
    out.header("firewall", None);
    out.raw("backend", quote(firewall_backend(c.firewall.backend)));
    out.str("anchor", &c.firewall.anchor);
    out.path("pfctl", &c.firewall.pfctl);
    out.path("nft", &c.firewall.nft);
    out.header("wireguard", None);
    out.raw("backend", quote(wireguard_backend(c.wireguard.backend)));
    out.raw("new_session", c.wireguard.new_session.to_string());
    if let Some(p) = &c.peering {
        out.header("peering", None);
        out.str("listen", &p.listen.to_string());
        out.path("key", &p.key);
    }
    for (name, k) in &c.kme {
        kme(&mut out, name, k);
    }
    for (name, q) in &c.qber {
        qber(&mut out, name, q);
    }
    for (name, l) in &c.link {
        link(&mut out, name, l);
    }
    testing(&mut out, &c.testing);
    out.0
}

fn daemon(out: &mut Out, c: &Config) {
    let d = &c.daemon;
    out.header("daemon", None);
    out.str("user", &d.user);
    out.path("chroot", &d.chroot);
    out.path("state_dir", &d.state_dir);
    out.path("socket", &d.socket);
    if let Some(g) = &d.socket_group {
        out.str("socket_group", g);
    }
    out.str("syslog_facility", &d.syslog_facility);
    if let Some(m) = d.metrics {
        out.str("metrics", &m.to_string());
    }
    let on_stop = match d.on_stop {
        OnStop::Keep => "keep",
        OnStop::Lockdown => "lockdown",
    };
    out.raw("on_stop", quote(on_stop));
}

fn policy(out: &mut Out, c: &Config) {
    let p = &c.policy;
    out.header("policy", None);
    let keys: Vec<String> = p.pubkeys.iter().map(|k| quote(&path_str(k))).collect();
    out.raw("pubkeys", format!("[{}]", keys.join(", ")));
    out.path("dir", &p.dir);
    if let Some(i) = &p.incoming {
        out.path("incoming", i);
    }
    out.str("expiry_warning", &crate::duration::format(p.expiry_warning));
}

fn kme(out: &mut Out, name: &str, k: &KmeConf) {
    out.header("kme", Some(name));
    out.str("url", &k.url);
    out.path("ca", &k.ca);
    out.path("cert", &k.cert);
    out.path("key", &k.key);
    out.str("sae_id", &k.sae_id);
    let method = match k.method {
        crate::conf::KmeMethod::Post => "POST",
        crate::conf::KmeMethod::Get => "GET",
    };
    out.raw("method", quote(method));
    out.raw("keys_low", k.keys_low.to_string());
}

fn qber(out: &mut Out, name: &str, q: &QberConf) {
    out.header("qber", Some(name));
    let driver = match q.driver {
        QberDriver::Sim => "sim",
        QberDriver::Etsi015 => "etsi015",
        QberDriver::Prometheus => "prometheus",
        QberDriver::HttpJson => "http-json",
    };
    out.raw("driver", quote(driver));
    if let Some(u) = &q.url {
        out.str("url", u);
    }
    out.str("poll", &crate::duration::format(q.poll));
    if q.driver == QberDriver::HttpJson {
        if let Some(p) = &q.pointer {
            out.str("pointer", p);
        }
        out.raw("scale", float(q.scale));
    }
    for (key, p) in [("ca", &q.ca), ("cert", &q.cert), ("key", &q.key)] {
        if let Some(p) = p {
            out.path(key, p);
        }
    }
    if q.driver == QberDriver::Sim {
        sim(out, &q.sim);
    }
}

fn sim(out: &mut Out, s: &SimLinkConf) {
    out.raw("length_km", float(s.length_km));
    out.raw("loss_db_km", float(s.loss_db_km));
    out.raw("detector_efficiency", float(s.detector_efficiency));
    out.raw("dark_count", float(s.dark_count));
    out.raw("misalignment", float(s.misalignment));
    out.raw("mean_photon", float(s.mean_photon));
    out.raw("sample_bits", s.sample_bits.to_string());
    out.raw("eve", float(s.eve));
    out.raw("noise", float(s.noise));
    out.raw("seed", s.seed.to_string());
}

fn link(out: &mut Out, name: &str, l: &LinkConf) {
    out.header("link", Some(name));
    out.str("qber", &l.qber);
    out.str("qber_id", &l.qber_id);
    let opt = |out: &mut Out, key: &str, v: Option<&str>| {
        if let Some(v) = v {
            out.str(key, v);
        }
    };
    opt(out, "kme", l.kme.as_deref());
    opt(out, "peer_sae_id", l.peer_sae_id.as_deref());
    if let Some(r) = l.role {
        let role = match r {
            Role::Master => "master",
            Role::Slave => "slave",
        };
        out.raw("role", quote(role));
    }
    opt(out, "peer", l.peer.as_deref());
    opt(out, "peer_pubkey", l.peer_pubkey.as_deref());
    out.str("wg_interface", &l.wg_interface);
    opt(out, "wg_peer", l.wg_peer.as_deref());
    opt(out, "wg_pubkey", l.wg_pubkey.as_deref());
    out.raw("wg_port", l.wg_port.to_string());
    if l.rdomain != 0 {
        out.raw("rdomain", l.rdomain.to_string());
    }
    if l.udp_rdomain != 0 {
        out.raw("udp_rdomain", l.udp_rdomain.to_string());
    }
    let addrs: Vec<String> = l.addresses.iter().map(|a| quote(&a.to_string())).collect();
    out.raw("addresses", format!("[{}]", addrs.join(", ")));
}

fn firewall_backend(b: FirewallBackend) -> &'static str {
    match b {
        FirewallBackend::Pf => "pf",
        FirewallBackend::Nftables => "nftables",
        FirewallBackend::DryRun => "dry-run",
    }
}

fn wireguard_backend(b: WireguardBackend) -> &'static str {
    match b {
        WireguardBackend::Openbsd => "openbsd",
        WireguardBackend::Linux => "linux",
        WireguardBackend::Userspace => "userspace",
        WireguardBackend::DryRun => "dry-run",
    }
}

/// A TOML string literal, escaped as toml_edit would write it.
fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// Paths come from TOML strings, so they are UTF-8.
fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The shortest text that reads back as exactly `x`, always a TOML float.
fn float(x: f64) -> String {
    // `{:?}` is the shortest round-trip form ("25.0", "1.7e-6", "1e16"), all
    // valid TOML floats; the parser refuses NaN and infinities.
    format!("{x:?}")
}

struct Out(String);

impl Out {
    fn header(&mut self, kind: &str, name: Option<&str>) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        let title = match name {
            Some(n) => format!("[{kind}.{}]", toml_edit::Key::new(n).display_repr()),
            None => format!("[{kind}]"),
        };
        let _ = writeln!(self.0, "{title}");
    }

    fn raw(&mut self, key: &str, value: String) {
        let _ = writeln!(self.0, "{key} = {value}");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.raw(key, quote(value));
    }

    fn path(&mut self, key: &str, value: &Path) {
        self.raw(key, quote(&path_str(value)));
    }
}

/// Printed only when set (a production build never parses it).
fn testing(out: &mut Out, t: &crate::conf::TestingConf) {
    if *t == crate::conf::TestingConf::default() {
        return;
    }
    out.header("testing", None);
    if let Some(d) = t.rotate {
        out.raw("rotate", quote(&crate::duration::format(d)));
    }
    if let Some(d) = t.max_key_age {
        out.raw("max_key_age", quote(&crate::duration::format(d)));
    }
    if t.no_jitter {
        out.raw("no_jitter", "true".into());
    }
    if t.wall_clock_offset != 0 {
        out.raw("wall_clock_offset", t.wall_clock_offset.to_string());
    }
    if let Some(e) = &t.engine {
        out.raw("engine", quote(&e.display().to_string()));
    }
    if let Some(d) = t.psk_check {
        out.raw("psk_check", quote(&crate::duration::format(d)));
    }
    if t.panic_on_reload {
        out.raw("panic_on_reload", "true".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back() {
        for x in [25.0, 0.21, 1.7e-6, 0.045, 1e16, 1e-300, 0.1 + 0.2, 3.0] {
            let text = format!("x = {}", float(x));
            let doc: toml_edit::DocumentMut = text.parse().unwrap();
            assert_eq!(doc["x"].as_float(), Some(x), "{text}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(quote("a\"b\\c"), r#"'a"b\c'"#);
        let doc: toml_edit::DocumentMut = format!("x = {}", quote("é\n\"")).parse().unwrap();
        assert_eq!(doc["x"].as_str(), Some("é\n\""));
    }
}
