//! Each qkdpfd.conf section to its checked type (parent, pure), then the
//! checks across sections: references to `[qber.X]`/`[kme.X]`, at least
//! one link, no WireGuard peer claimed by two links.

use super::value::{self, End, account, choice, float, int, path, text};
use super::{Errs, Got, Sect, item_at, title};
use crate::conf::{
    Config, DaemonConf, FirewallBackend, FirewallConf, KmeConf, KmeMethod, LinkConf, OnStop,
    PeeringConf, PolicyConf, QberConf, QberDriver, Role, SimLinkConf, WireguardBackend,
    WireguardConf,
};
use crate::names::Names;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use toml_edit::{Table, TableLike};

const SECTIONS: &[&str] = &[
    "daemon",
    "policy",
    "firewall",
    "wireguard",
    "peering",
    "kme.NAME",
    "qber.NAME",
    "link.NAME",
];
const DAEMON_KEYS: &[&str] = &[
    "user",
    "chroot",
    "state_dir",
    "socket",
    "socket_group",
    "syslog_facility",
    "metrics",
    "on_stop",
];
const POLICY_KEYS: &[&str] = &["pubkeys", "dir", "incoming", "expiry_warning"];
const FIREWALL_KEYS: &[&str] = &["backend", "anchor", "pfctl", "nft"];
const WIREGUARD_KEYS: &[&str] = &["backend", "new_session"];
const PEERING_KEYS: &[&str] = &["listen", "key"];
const KME_KEYS: &[&str] = &["url", "ca", "cert", "key", "sae_id", "method", "keys_low"];
const KME_METHODS: &[(&str, KmeMethod)] = &[("POST", KmeMethod::Post), ("GET", KmeMethod::Get)];
const SIM_KEYS: &[&str] = &[
    "length_km",
    "loss_db_km",
    "detector_efficiency",
    "dark_count",
    "misalignment",
    "mean_photon",
    "sample_bits",
    "eve",
    "noise",
    "seed",
];
const QBER_KEYS: &[&str] = &[
    "driver",
    "url",
    "poll",
    "pointer",
    "scale",
    "ca",
    "cert",
    "key",
    "length_km",
    "loss_db_km",
    "detector_efficiency",
    "dark_count",
    "misalignment",
    "mean_photon",
    "sample_bits",
    "eve",
    "noise",
    "seed",
];
/// Key agreement: present with `kme`, absent without it.
const KEYED_KEYS: &[&str] = &[
    "peer_sae_id",
    "role",
    "peer",
    "peer_pubkey",
    "wg_peer",
    "wg_pubkey",
];
const WITH_KME: &str = " (required with kme)";
const LINK_KEYS: &[&str] = &[
    "qber",
    "qber_id",
    "kme",
    "peer_sae_id",
    "role",
    "peer",
    "peer_pubkey",
    "wg_interface",
    "wg_peer",
    "wg_pubkey",
    "wg_port",
    "addresses",
    "rdomain",
    "udp_rdomain",
];
#[cfg(feature = "testing")]
const TESTING_KEYS: &[&str] = &[
    "rotate",
    "max_key_age",
    "no_jitter",
    "psk_check",
    "engine",
    "wall_clock_offset",
    "panic_on_reload",
];

const FACILITIES: &[(&str, &str)] = &[
    ("daemon", "daemon"),
    ("user", "user"),
    ("auth", "auth"),
    ("authpriv", "authpriv"),
    ("local0", "local0"),
    ("local1", "local1"),
    ("local2", "local2"),
    ("local3", "local3"),
    ("local4", "local4"),
    ("local5", "local5"),
    ("local6", "local6"),
    ("local7", "local7"),
];
const ON_STOP: &[(&str, OnStop)] = &[("keep", OnStop::Keep), ("lockdown", OnStop::Lockdown)];
const FW_BACKENDS: &[(&str, FirewallBackend)] = &[
    ("pf", FirewallBackend::Pf),
    ("nftables", FirewallBackend::Nftables),
    ("dry-run", FirewallBackend::DryRun),
];
const WG_BACKENDS: &[(&str, WireguardBackend)] = &[
    ("openbsd", WireguardBackend::Openbsd),
    ("linux", WireguardBackend::Linux),
    ("userspace", WireguardBackend::Userspace),
    ("dry-run", WireguardBackend::DryRun),
];
const DRIVERS: &[(&str, QberDriver)] = &[
    ("sim", QberDriver::Sim),
    ("etsi015", QberDriver::Etsi015),
    ("prometheus", QberDriver::Prometheus),
    ("http-json", QberDriver::HttpJson),
];
const ROLES: &[(&str, Role)] = &[("master", Role::Master), ("slave", Role::Slave)];

/// The backends a fresh install on this OS uses.
pub(crate) fn default_backends() -> (FirewallBackend, WireguardBackend) {
    if cfg!(target_os = "openbsd") {
        (FirewallBackend::Pf, WireguardBackend::Openbsd)
    } else {
        (FirewallBackend::Nftables, WireguardBackend::Linux)
    }
}

/// One `[kind.NAME]` section: its name, table, header and name offsets.
struct Named<'d> {
    name: &'d str,
    t: &'d dyn TableLike,
    at: usize,
    name_at: usize,
}

/// The whole document. Never fails by itself: errors land in `errs`, and
/// the caller discards the result if there are any.
pub(super) fn config(file: &str, root: &Table, errs: &mut Errs) -> Config {
    check_top(root, errs);
    let empty = Table::new();
    let daemon = daemon(fixed(root, &empty, "daemon", DAEMON_KEYS, errs));
    let policy = match root.contains_key("policy") {
        true => policy(fixed(root, &empty, "policy", POLICY_KEYS, errs)),
        false => {
            errs.at(0, "missing section [policy] (pubkeys is required)".into());
            None
        }
    };
    let firewall = firewall(fixed(root, &empty, "firewall", FIREWALL_KEYS, errs));
    let wireguard = wireguard(fixed(root, &empty, "wireguard", WIREGUARD_KEYS, errs));
    // pf cannot tell a handshake from data (no payload match): there a
    // lockdown drops both, and new_session re-creates only open links.
    let firewall = FirewallConf {
        handshakes: wireguard.new_session && firewall.backend != FirewallBackend::Pf,
        ..firewall
    };
    let peering = match root.contains_key("peering") {
        true => peering(fixed(root, &empty, "peering", PEERING_KEYS, errs)),
        false => None,
    };

    let kmes = named(root, "kme", errs);
    let qbers = named(root, "qber", errs);
    let link_sects = named(root, "link", errs);
    let kme_names: Vec<&str> = kmes.iter().map(|n| n.name).collect();
    let qber_names: Vec<&str> = qbers.iter().map(|n| n.name).collect();
    let mut conf = Config {
        path: PathBuf::from(file),
        daemon,
        policy: policy.unwrap_or(PolicyConf {
            pubkeys: Vec::new(),
            dir: PathBuf::new(),
            incoming: None,
            expiry_warning: EXPIRY_WARNING,
        }),
        firewall,
        wireguard,
        peering,
        kme: BTreeMap::new(),
        qber: BTreeMap::new(),
        link: BTreeMap::new(),
        testing: Default::default(),
    };
    #[cfg(feature = "testing")]
    if root.contains_key("testing") {
        conf.testing = testing(fixed(root, &empty, "testing", TESTING_KEYS, errs));
    }
    for n in &kmes {
        let s = Sect::new(n.t, title("kme", Some(n.name)), n.at, errs, KME_KEYS);
        if let Some(k) = kme(s) {
            conf.kme.insert(n.name.to_string(), k);
        }
    }
    for n in &qbers {
        let s = Sect::new(n.t, title("qber", Some(n.name)), n.at, errs, QBER_KEYS);
        if let Some(q) = qber(s) {
            conf.qber.insert(n.name.to_string(), q);
        }
    }
    // A document that holds one link's value (etsi015, http-json, without
    // the link's qber_id in its URL) is every link's reading alike.
    let one_link: Vec<&str> = (conf.qber.iter())
        .filter(|(_, q)| {
            !matches!(q.driver, QberDriver::Sim | QberDriver::Prometheus)
                && q.url.as_deref().is_some_and(|u| !u.contains("{qber_id}"))
        })
        .map(|(n, _)| n.as_str())
        .collect();
    conf.link = links(&link_sects, &qber_names, &one_link, &kme_names, errs);
    if !root.contains_key("peering") {
        if let Some(n) = link_sects.iter().find(|n| n.t.contains_key("kme")) {
            let msg = format!(
                "{}: key agreement (kme) needs a [peering] section",
                title("link", Some(n.name))
            );
            errs.at(n.at, msg);
        }
    }
    conf
}

#[cfg(feature = "testing")]
fn testing(mut s: Sect) -> crate::conf::TestingConf {
    let short = value::duration(Duration::from_millis(500), Duration::from_secs(86400));
    crate::conf::TestingConf {
        rotate: s.get("rotate", &short),
        max_key_age: s.get("max_key_age", &short),
        no_jitter: s.or("no_jitter", false, value::boolean),
        psk_check: s.get("psk_check", &short),
        engine: s.get("engine", path),
        wall_clock_offset: s.or("wall_clock_offset", 0, int(-31_536_000, 31_536_000)),
        panic_on_reload: s.or("panic_on_reload", false, value::boolean),
    }
}

/// The `[link.NAME]` sections; no WireGuard peer may serve two links.
/// The map is built at once from them all (sorted, then packed): inserted
/// one by one in name order, its B-tree nodes stayed half empty, ~510 B a
/// link at 10,000 links where packed they take ~330.
fn links(
    links: &[Named],
    qbers: &[&str],
    one_link: &[&str],
    kmes: &[&str],
    errs: &mut Errs,
) -> BTreeMap<String, LinkConf> {
    let mut out = Vec::with_capacity(links.len());
    if links.is_empty() {
        errs.at(
            0,
            "missing section [link.NAME]: at least one link is required".into(),
        );
    }
    let mut peers: HashMap<(String, String), &str> = HashMap::new();
    let mut readers: HashMap<&str, &str> = HashMap::new();
    let mut names = Names::default();
    for n in links {
        if !value::valid_name(n.name) {
            let msg = format!("link name {:?}: expected {}", n.name, value::NAME_RULE);
            errs.at(n.name_at, msg);
        } else if n.name == "all" {
            // qkdctl's word for every link: `qkdctl unlock -f all` must
            // never be read as one link.
            let msg = "link name \"all\": reserved (qkdctl's word for every link)";
            errs.at(n.name_at, msg.into());
        }
        let s = Sect::new(n.t, title("link", Some(n.name)), n.at, errs, LINK_KEYS);
        let Some((l, wg_peer_at, qber_at)) = link(s, n.name, qbers, kmes, &mut names) else {
            continue;
        };
        if let Some(section) = one_link.iter().find(|q| **q == &*l.qber) {
            if let Some(other) = readers.insert(section, n.name) {
                let msg = format!(
                    "qber: [qber.{section}] reads one document holding one link's QBER \
                     (its url has no {{qber_id}}), and {} reads it already: put \
                     {{qber_id}} in the url, or give this link a section of its own",
                    title("link", Some(other))
                );
                errs.at(qber_at, msg);
            }
        }
        if let Some(wg_peer) = &l.wg_peer {
            let pair = (l.wg_interface.clone(), wg_peer.clone());
            if let Some(other) = peers.insert(pair, n.name) {
                let other = title("link", Some(other));
                let msg = format!("wg_peer: already used by {other} on {}", l.wg_interface);
                errs.at(wg_peer_at, msg);
            }
        }
        out.push((n.name.to_string(), l));
    }
    out.into_iter().collect()
}

/// A reader over the fixed section `name`, or over `empty` where it is
/// absent (or not a table, which `check_top` reports).
fn fixed<'d, 'e>(
    root: &'d Table,
    empty: &'d Table,
    name: &str,
    keys: &[&str],
    errs: &'e mut Errs,
) -> Sect<'d, 'e> {
    let (t, at): (&dyn TableLike, usize) = match root.get_key_value(name) {
        Some((k, item)) => (item.as_table_like().unwrap_or(empty), item_at(k, item, 0)),
        None => (empty, 0),
    };
    Sect::new(t, title(name, None), at, errs, keys)
}

/// Top-level keys: only the known sections, each a table.
fn check_top(root: &Table, errs: &mut Errs) {
    for (k, item) in root.iter() {
        let Some(key) = root.key(k) else { continue };
        let at = key.span().map_or(0, |s| s.start);
        let known = [
            "daemon",
            "policy",
            "firewall",
            "wireguard",
            "peering",
            #[cfg(feature = "testing")]
            "testing",
        ];
        let named = ["kme", "qber", "link"];
        let is_table = item.as_table_like().is_some();
        let msg = if known.contains(&k) && !is_table {
            format!("{k}: expected a section [{k}]")
        } else if named.contains(&k) && !is_table {
            format!("{k}: expected sections [{k}.NAME]")
        } else if known.contains(&k) || named.contains(&k) {
            continue;
        } else if is_table {
            let name = key.display_repr();
            format!(
                "unknown section [{name}]; expected one of: {}",
                SECTIONS.join(", ")
            )
        } else {
            format!(
                "key {k:?} outside any section; keys go under one of: {}",
                SECTIONS.join(", ")
            )
        };
        errs.at(at, msg);
    }
}

/// The `[kind.NAME]` sections, in the order written.
fn named<'d>(root: &'d Table, kind: &str, errs: &mut Errs) -> Vec<Named<'d>> {
    let Some(parent) = root.get(kind).and_then(|i| i.as_table_like()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, item) in parent.iter() {
        let Some(key) = parent.key(name) else {
            continue;
        };
        let at = item_at(key, item, 0);
        let name_at = key.span().map_or(at, |s| s.start);
        let Some(t) = item.as_table_like() else {
            let msg = format!("unknown key {name:?} in [{kind}]; expected sections [{kind}.NAME]");
            errs.at(name_at, msg);
            continue;
        };
        if name.is_empty() {
            errs.at(name_at, format!("[{kind}.\"\"]: expected a non-empty name"));
            continue;
        }
        out.push(Named {
            name,
            t,
            at,
            name_at,
        });
    }
    out
}

fn daemon(mut s: Sect) -> DaemonConf {
    DaemonConf {
        user: s.or("user", "_qkdpfd".into(), account),
        chroot: s.or("chroot", "/var/empty".into(), path),
        state_dir: s.or("state_dir", "/var/db/qkdpfd".into(), path),
        socket: s.or("socket", "/var/run/qkdpfd.sock".into(), path),
        socket_group: s.get("socket_group", account),
        syslog_facility: s.or("syslog_facility", "daemon", choice(FACILITIES)).into(),
        metrics: s.get("metrics", value::socket_addr),
        on_stop: s.or("on_stop", OnStop::Keep, choice(ON_STOP)),
    }
}

/// `[policy] expiry_warning`'s default: a week, time for a GitOps change.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86400);

/// `[kme.*] keys_low`'s default: ten keys, a few rotation periods.
const KEYS_LOW: i64 = 10;

fn policy(mut s: Sect) -> Option<PolicyConf> {
    let pubkeys = s.list("pubkeys", "absolute paths of public keys", path);
    let dir = s.or("dir", "/var/db/qkdpfd/policy".into(), path);
    let incoming = s.get("incoming", path);
    let expiry_warning = s.or(
        "expiry_warning",
        EXPIRY_WARNING,
        value::duration(Duration::ZERO, Duration::from_secs(365 * 86400)),
    );
    Some(PolicyConf {
        pubkeys: pubkeys?.into_iter().map(|(p, _)| p).collect(),
        dir,
        incoming,
        expiry_warning,
    })
}

fn firewall(mut s: Sect) -> FirewallConf {
    let d = FirewallConf::default();
    FirewallConf {
        backend: s.or("backend", d.backend, choice(FW_BACKENDS)),
        anchor: s.or("anchor", d.anchor, value::name),
        pfctl: s.or("pfctl", d.pfctl, path),
        nft: s.or("nft", d.nft, path),
        handshakes: false,
    }
}

impl Default for FirewallConf {
    /// `[firewall]` when the config leaves it out, and what `qkdpfd -L`
    /// assumes when the config does not parse.
    fn default() -> FirewallConf {
        FirewallConf {
            backend: default_backends().0,
            anchor: "qkdpfd".into(),
            pfctl: "/sbin/pfctl".into(),
            nft: "/usr/sbin/nft".into(),
            handshakes: false,
        }
    }
}

fn wireguard(mut s: Sect) -> WireguardConf {
    let (_, backend) = default_backends();
    let backend = s.or("backend", backend, choice(WG_BACKENDS));
    // dry-run has no sessions to renew.
    let on = backend != WireguardBackend::DryRun;
    WireguardConf {
        backend,
        new_session: s.or("new_session", on, value::boolean),
    }
}

fn peering(mut s: Sect) -> Option<PeeringConf> {
    let listen = s.req("listen", value::socket_addr);
    let key = s.req("key", path);
    Some(PeeringConf {
        listen: listen?,
        key: key?,
    })
}

fn kme(mut s: Sect) -> Option<KmeConf> {
    let url = s.req("url", value::https_url);
    let ca = s.req("ca", path);
    let cert = s.req("cert", path);
    let key = s.req("key", path);
    let sae_id = s.req("sae_id", value::sae_id);
    let method = s.or("method", KmeMethod::Post, choice(KME_METHODS));
    let keys_low = s.or("keys_low", KEYS_LOW, value::int(0, 1 << 31)) as u64;
    Some(KmeConf {
        method,
        keys_low,
        url: url?,
        ca: ca?,
        cert: cert?,
        key: key?,
        sae_id: sae_id?,
    })
}

fn qber(mut s: Sect) -> Option<QberConf> {
    use QberDriver::{HttpJson, Sim};
    let driver = s.req("driver", choice(DRIVERS));
    let url = match driver {
        Some(Sim) => {
            s.forbid("url", "not valid with driver = \"sim\"");
            None
        }
        Some(_) => s.req("url", value::http_url),
        None => s.get("url", value::http_url),
    };
    let poll_range = value::duration(Duration::from_millis(100), Duration::from_secs(3600));
    let poll = s.or("poll", Duration::from_secs(1), poll_range);
    let scale_range = float(End::Excl(0.0), End::Open);
    let (pointer, scale) = match driver {
        Some(HttpJson) => (
            s.req("pointer", value::json_pointer),
            s.or("scale", 1.0, scale_range),
        ),
        Some(_) => {
            s.forbid("pointer", "only valid with driver = \"http-json\"");
            s.forbid("scale", "only valid with driver = \"http-json\"");
            (None, 1.0)
        }
        None => (
            s.get("pointer", value::json_pointer),
            s.or("scale", 1.0, scale_range),
        ),
    };
    let tls = |s: &mut Sect, key: &str| match driver {
        Some(Sim) => {
            s.forbid(key, "not valid with driver = \"sim\"");
            None
        }
        _ => s.get(key, path),
    };
    let (ca, cert, key) = (tls(&mut s, "ca"), tls(&mut s, "cert"), tls(&mut s, "key"));
    // What the engine's client will need (`engine::qber::fetch`), said
    // here at its line rather than by a start that fails.
    if driver.is_some_and(|d| d != Sim) {
        if (url.as_deref()).is_some_and(|u| u.starts_with("https://")) && !s.has("ca") {
            s.bad(
                "url",
                "https needs ca, the CA that signed the source's certificate",
            );
        }
        match (s.has("cert"), s.has("key")) {
            (true, false) => s.bad("cert", "goes with key (a client certificate and its key)"),
            (false, true) => s.bad("key", "goes with cert (a client certificate and its key)"),
            _ => {}
        }
    }
    let sim = match driver {
        Some(Sim) | None => sim(&mut s),
        Some(_) => {
            for k in SIM_KEYS {
                s.forbid(k, "only valid with driver = \"sim\"");
            }
            SimLinkConf::default()
        }
    };
    let url = match driver {
        Some(Sim) => None,
        _ => Some(url?),
    };
    Some(QberConf {
        driver: driver?,
        url,
        poll,
        pointer: if driver == Some(HttpJson) {
            Some(pointer?)
        } else {
            None
        },
        scale,
        ca,
        cert,
        key,
        sim,
    })
}

/// The simulated link's physics, each bounded to what the model handles.
fn sim(s: &mut Sect) -> SimLinkConf {
    use End::{Excl, Incl};
    let d = SimLinkConf::default();
    let bits = |g: Got| int(100, 1_000_000_000)(g).map(|i| i as u64);
    SimLinkConf {
        length_km: s.or("length_km", d.length_km, float(Incl(0.0), Incl(500.0))),
        loss_db_km: s.or("loss_db_km", d.loss_db_km, float(Incl(0.0), Incl(2.0))),
        detector_efficiency: s.or(
            "detector_efficiency",
            d.detector_efficiency,
            float(Excl(0.0), Incl(1.0)),
        ),
        dark_count: s.or("dark_count", d.dark_count, float(Incl(0.0), Excl(1.0))),
        misalignment: s.or("misalignment", d.misalignment, float(Incl(0.0), Incl(0.5))),
        mean_photon: s.or("mean_photon", d.mean_photon, float(Excl(0.0), Incl(10.0))),
        sample_bits: s.or("sample_bits", d.sample_bits, bits),
        eve: s.or("eve", d.eve, float(Incl(0.0), Incl(1.0))),
        noise: s.or("noise", d.noise, float(Incl(0.0), Incl(0.5))),
        seed: s.or("seed", d.seed, value::seed),
    }
}

/// The name of an existing `[kind.NAME]` section.
fn reference<'a>(kind: &'a str, names: &'a [&str]) -> impl Fn(Got) -> value::Check<String> + 'a {
    move |g| {
        let n = text(g).map_err(|_| format!("expected the name of a [{kind}.NAME] section"))?;
        match names.contains(&n.as_str()) {
            true => Ok(n),
            false => Err(format!("there is no {} section", title(kind, Some(&n)))),
        }
    }
}

/// A link, and where its `wg_peer` is written (for the duplicate check).
fn link(
    mut s: Sect,
    name: &str,
    qbers: &[&str],
    kmes: &[&str],
    names: &mut Names,
) -> Option<(LinkConf, usize, usize)> {
    let qber = s.req("qber", reference("qber", qbers));
    let qber_id = s.req("qber_id", value::qber_id);
    let kme = s.get("kme", reference("kme", kmes));
    let keyed = s.has("kme");
    if !keyed {
        for k in KEYED_KEYS {
            s.forbid(k, "only valid together with kme");
        }
    }
    let part = |s: &mut Sect, key: &str, check: fn(Got) -> value::Check<String>| match keyed {
        true => s.req_with(key, WITH_KME, check),
        false => None,
    };
    let peer_sae_id = part(&mut s, "peer_sae_id", value::sae_id);
    let peer = part(&mut s, "peer", value::peer);
    let peer_pubkey = part(&mut s, "peer_pubkey", value::peer_pubkey);
    let wg_peer = part(&mut s, "wg_peer", value::wg_key);
    let wg_pubkey = match keyed {
        true => s.get("wg_pubkey", value::wg_key),
        false => None,
    };
    let role = match keyed {
        true => s.req_with("role", WITH_KME, choice(ROLES)),
        false => None,
    };
    let wg_interface = s.req("wg_interface", value::wg_interface);
    let wg_port = s.req("wg_port", int(1, 65535));
    let rdomain = s.or("rdomain", 0, int(0, 255));
    let udp_rdomain = s.or("udp_rdomain", 0, int(0, 255));
    let addresses = s.list("addresses", "IP address literals", value::ip);
    let mut seen = Vec::new();
    for (a, at) in addresses.iter().flatten() {
        if seen.contains(a) {
            s.errs().at(*at, format!("addresses: {a} is listed twice"));
        }
        seen.push(*a);
    }
    let keyed_ok = !keyed
        || (kme.is_some()
            && peer_sae_id.is_some()
            && role.is_some()
            && peer.is_some()
            && peer_pubkey.is_some()
            && wg_peer.is_some());
    let l = LinkConf {
        name: name.to_string(),
        qber: names.of(&qber?),
        qber_id: qber_id?,
        kme: kme.map(|n| names.of(&n)),
        peer_sae_id: peer_sae_id.map(|n| names.of(&n)),
        role,
        peer: peer.map(|n| names.of(&n)),
        peer_pubkey: peer_pubkey.map(|n| names.of(&n)),
        wg_interface: wg_interface?,
        wg_peer,
        wg_pubkey,
        wg_port: u16::try_from(wg_port?).ok()?,
        rdomain: u32::try_from(rdomain).ok()?,
        udp_rdomain: u32::try_from(udp_rdomain).ok()?,
        addresses: addresses?.into_iter().map(|(a, _)| a).collect(),
    };
    keyed_ok.then(|| (l, s.value_at("wg_peer"), s.value_at("qber")))
}
