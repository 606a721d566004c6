//! What the parent hands the engine, which has no files and no resolver
//! in its chroot (DESIGN §2): the engine's config message, with the
//! credentials the parent reads and resolves for it — the peering key, KME
//! TLS material and addresses and each keyed link's link_id (key agreement,
//! DESIGN §6), network QBER sources' TLS files and addresses — and the
//! check that these fit the channel's frame.
//!
//! Key material goes into the message only: never a command line, a log
//! line or an error.

use super::Parent;
use super::wg::{WgBackend, WgPeer};
use crate::conf::{Config, LinkConf, Role};
use crate::imsg::{EngineConfig, EngineLink, KmeNet, LinkKeys, PeeringNet, QberNet};
use crate::lock::Owner;
use crate::log::{self, Event};
use crate::policy::PublicKey;
use crate::proto::signify_key::{SecretKey, parse_pubkey_line};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// What the engine gets that the parent reads and resolves from a config.
#[derive(Default)]
pub struct EngineInputs {
    /// TLS bytes and resolved addresses of network QBER sources.
    pub qber_net: BTreeMap<String, QberNet>,
    /// Peering key, KME credentials and link_ids.
    pub key_net: KeyNet,
}

/// Reads and resolves what the engine gets from `conf`: network QBER
/// sources ([`qber_net`]), then key agreement ([`key_net`]). The one
/// derivation start-up ([`Parent::load_engine_inputs`]), reload and
/// `qkdpfd -n` use; errors name the file, host or link.
pub fn engine_inputs(
    conf: &Config,
    policy_keys: &[PublicKey],
    backend: &mut dyn WgBackend,
) -> Result<EngineInputs, String> {
    let qber_net = qber_net(conf)?;
    let key_net = key_net(conf, policy_keys, backend)?;
    Ok(EngineInputs { qber_net, key_net })
}

/// The engine's config message: its links (with the epochs persisted
/// here), QBER sources, control socket readers, privilege drop and the
/// credentials below.
pub(super) fn engine_config(p: &Parent, inputs: EngineInputs) -> EngineConfig {
    let EngineInputs {
        qber_net,
        key_net:
            KeyNet {
                peering,
                kme,
                links: mut keys,
            },
    } = inputs;
    let (gid, uids) = p
        .conf
        .daemon
        .socket_group
        .as_deref()
        .and_then(|g| crate::privsep::resolve_group(g).ok())
        .map(|(g, u)| (Some(g), u))
        .unwrap_or((None, Vec::new()));
    let drop_to = if crate::privsep::is_real_root() {
        match crate::privsep::resolve_user(&p.conf.daemon.user, &p.conf.daemon.chroot) {
            Ok(d) => Some(d),
            Err(e) => {
                // The engine refuses to run as root without a drop target.
                log::event(Event::PrivdropUnavailable).msg(e).send();
                None
            }
        }
    } else {
        None
    };
    EngineConfig {
        links: p
            .conf
            .link
            .values()
            .map(|l| EngineLink {
                name: l.name.clone(),
                qber: l.qber.to_string(),
                qber_id: l.qber_id.clone(),
                persisted: p
                    .links
                    .state
                    .links
                    .get(&l.name)
                    .map(|r| r.reasons.owned_by(Owner::Engine))
                    .unwrap_or_default(),
                keys: keys.remove(&l.name).map(|k| LinkKeys {
                    epoch: p.links.epoch(&l.name),
                    key_age_secs: key_age(p.links.state.links.get(&l.name)),
                    ..k
                }),
            })
            .collect(),
        qber: p.conf.qber.clone(),
        ctl_readonly_uids: uids,
        ctl_readonly_gid: gid,
        verbose: log::verbose(),
        drop_to,
        metrics: p.conf.daemon.metrics.is_some(),
        qber_net,
        peering,
        peering_sockets: p
            .conf
            .peering
            .as_ref()
            .map_or(0, |c| crate::privsep::peering_count(c.listen)),
        kme,
        testing: p.conf.testing.clone(),
    }
}

/// The files the parent reads and sends to the engine (TLS material of
/// the KMEs and the network QBER sources): together they must fit the
/// channel's frame, base64-encoded. Checked by `qkdpfd -n` and before the
/// engine starts, naming the largest files; the exact frame is checked too
/// when it is built.
pub fn engine_files_fit(conf: &Config) -> Result<(), String> {
    let mut files: Vec<(String, PathBuf, u64)> = Vec::new();
    let mut add = |what: String, p: &PathBuf| {
        let n = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        files.push((what, p.clone(), n));
    };
    for (name, k) in &conf.kme {
        add(format!("[kme.{name}] ca"), &k.ca);
        add(format!("[kme.{name}] cert"), &k.cert);
        add(format!("[kme.{name}] key"), &k.key);
    }
    for (name, q) in &conf.qber {
        for (key, p) in [("ca", &q.ca), ("cert", &q.cert), ("key", &q.key)] {
            if let Some(p) = p {
                add(format!("[qber.{name}] {key}"), p);
            }
        }
    }
    // Base64 is 4 bytes for every 3; the rest of the config is small.
    let total: u64 = files.iter().map(|(_, _, n)| n.div_ceil(3) * 4).sum();
    let limit = crate::imsg::MAX_PAYLOAD as u64;
    if total + (64 << 10) <= limit {
        return Ok(());
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.2));
    let largest: Vec<String> = files
        .iter()
        .take(3)
        .map(|(what, p, n)| format!("{what} = {} ({n} bytes)", p.display()))
        .collect();
    Err(format!(
        "the TLS files sent to the engine come to about {total} bytes encoded, over the \
         channel's {limit}: largest {}",
        largest.join(", ")
    ))
}

/// Reads the TLS files of every network `[qber.X]` and resolves its URL's
/// host (the engine is chrooted: no files, no resolver).
pub fn qber_net(conf: &Config) -> Result<BTreeMap<String, QberNet>, String> {
    let read = |what: &str, name: &str, p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, String> {
        p.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| format!("[qber.{name}] {what} {}: {e}", p.display()))
            })
            .transpose()
    };
    let mut out = BTreeMap::new();
    for (name, q) in &conf.qber {
        if q.driver == crate::conf::QberDriver::Sim {
            continue;
        }
        let url = q.url.as_deref().unwrap_or_default();
        let addr = resolve_url(url, crate::url::Kind::Qber)
            .map_err(|e| format!("[qber.{name}] url {url}: {e}"))?;
        let net = QberNet {
            ca: read("ca", name, &q.ca)?,
            cert: read("cert", name, &q.cert)?,
            key: read("key", name, &q.key)?.map(zeroize::Zeroizing::new),
            addr: Some(addr),
        };
        // Opened here as the engine will: a PEM it could not use would
        // otherwise be found only there, after the config was swapped in.
        crate::engine::sources::opens(name, q, &net).map_err(|e| format!("[qber.{name}] {e}"))?;
        out.insert(name.clone(), net);
    }
    Ok(out)
}

/// How old the PSK the state file proves is, in seconds (the engine's
/// `key-stale` counts from its install, not from this start); the most
/// there is when the wall clock is now before its install (stepped back:
/// its age is unknown). None without a record of it (a state file from
/// before the time was kept counts from the start, as it did).
fn key_age(rec: Option<&crate::state::LinkRecord>) -> Option<u64> {
    let rec = rec.filter(|r| r.verifier.is_some())?;
    let at = rec.installed_at?;
    let now = crate::utc::now_unix();
    Some(now.checked_sub(at).unwrap_or(u64::MAX))
}

/// The first address of a URL's host and port.
pub(crate) fn resolve_url(url: &str, kind: crate::url::Kind) -> Result<SocketAddr, String> {
    let u = crate::url::Url::parse(url, kind)?;
    let hostport = u.authority();
    (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} has no address"))
}

/// What the engine needs for key agreement, read and resolved by the parent.
#[derive(Clone, Debug, Default)]
pub struct KeyNet {
    pub peering: Option<PeeringNet>,
    pub kme: BTreeMap<String, KmeNet>,
    /// Per keyed link; `epoch` is filled from the state file when sent.
    pub links: BTreeMap<String, LinkKeys>,
}

/// Reads `[peering] key`, every used `[kme.X]`'s TLS files, resolves hosts
/// and computes each keyed link's link_id. Errors name the file or link.
pub fn key_net(
    conf: &Config,
    policy_keys: &[PublicKey],
    backend: &mut dyn WgBackend,
) -> Result<KeyNet, String> {
    let keyed: Vec<&LinkConf> = conf.link.values().filter(|l| l.kme.is_some()).collect();
    if keyed.is_empty() {
        return Ok(KeyNet::default());
    }
    let p = conf
        .peering
        .as_ref()
        .ok_or("key agreement needs a [peering] section")?;
    let secret = SecretKey::read(&p.key).map_err(|e| format!("[peering] key {e}"))?;
    let ours = secret.verifying_key();
    if policy_keys.iter().any(|k| k.key == ours) {
        return Err(format!(
            "[peering] key {}: the peering key must differ from every policy key",
            p.key.display()
        ));
    }
    let peering = PeeringNet {
        secret: zeroize::Zeroizing::new(secret.signing_key().to_bytes()),
    };
    let mut kme = BTreeMap::new();
    let mut links = BTreeMap::new();
    for l in keyed {
        let kname = l.kme.as_deref().expect("keyed");
        let k = &conf.kme[kname];
        if !kme.contains_key(kname) {
            kme.insert(kname.to_string(), kme_net(kname, k)?);
        }
        let keys = link_keys(l, &k.sae_id, ours, p.listen, backend)?;
        links.insert(l.name.clone(), keys);
    }
    Ok(KeyNet {
        peering: Some(peering),
        kme,
        links,
    })
}

fn kme_net(name: &str, k: &crate::conf::KmeConf) -> Result<KmeNet, String> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("[kme.{name}] {what} {}: {e}", p.display()))
    };
    let net = KmeNet {
        url: k.url.clone(),
        sae_id: k.sae_id.clone(),
        ca: read("ca", &k.ca)?,
        cert: read("cert", &k.cert)?,
        key: zeroize::Zeroizing::new(read("key", &k.key)?),
        addr: resolve_url(&k.url, crate::url::Kind::Kme)
            .map_err(|e| format!("[kme.{name}] url: {e}"))?,
        get: k.method == crate::conf::KmeMethod::Get,
        keys_low: k.keys_low,
    };
    // The engine's client, built here first: a PEM or URL it would refuse
    // ends the engine (every link locked) if only it finds out.
    crate::engine::kme::KmeClient::new(name, &net.url, &net.ca, &net.cert, net.key.clone(), None)
        .map_err(|e| format!("[kme.{name}] {e}"))?;
    Ok(net)
}

fn link_keys(
    l: &LinkConf,
    our_sae: &str,
    our_peering: ed25519_dalek::VerifyingKey,
    listen: SocketAddr,
    backend: &mut dyn WgBackend,
) -> Result<LinkKeys, String> {
    let at = |e: String| format!("[link.{}] {e}", l.name);
    let (Some(peer_sae), Some(role), Some(peer), Some(peer_pubkey), Some(wg_peer)) =
        (&l.peer_sae_id, l.role, &l.peer, &l.peer_pubkey, &l.wg_peer)
    else {
        return Err(at("incomplete key agreement settings".into()));
    };
    let far = WgPeer::from_conf(&l.wg_interface, wg_peer).map_err(at)?;
    let ours = own_wg_key(l, backend).map_err(at)?;
    let peer_key = parse_pubkey_line(peer_pubkey).map_err(|e| at(format!("peer_pubkey: {e}")))?;
    if peer_key.key == our_peering {
        return Err(at("peer_pubkey is our own peering key".into()));
    }
    let peer_addr = resolve_from(peer, listen).map_err(|e| at(format!("peer {peer}: {e}")))?;
    let link_id = match role {
        Role::Master => crate::proto::peer::link_id(our_sae, peer_sae, &ours, &far.public_key),
        Role::Slave => crate::proto::peer::link_id(peer_sae, our_sae, &far.public_key, &ours),
    }
    .map_err(at)?;
    Ok(LinkKeys {
        kme: l.kme.as_deref().expect("keyed").to_string(),
        peer_sae_id: peer_sae.to_string(),
        role,
        peer: peer_addr,
        peer_pubkey: peer_key.key.to_bytes(),
        link_id: link_id.0,
        epoch: 0,
        key_age_secs: None,
    })
}

/// This gateway's WireGuard public key: `wg_pubkey`, checked against the
/// interface where there is one, else read from the interface.
fn own_wg_key(l: &LinkConf, backend: &mut dyn WgBackend) -> Result<[u8; 32], String> {
    let configured = l
        .wg_pubkey
        .as_deref()
        .map(|k| WgPeer::from_conf(&l.wg_interface, k).map(|p| p.public_key))
        .transpose()
        .map_err(|e| format!("wg_pubkey: {e}"))?;
    match (configured, backend.public_key(&l.wg_interface)) {
        (Some(c), Ok(k)) if c != k => Err(format!(
            "wg_pubkey differs from the public key of {}",
            l.wg_interface
        )),
        (_, Ok(k)) => Ok(k),
        (Some(c), Err(_)) if backend.name() == "dry-run" => Ok(c),
        (_, Err(e)) => Err(format!(
            "cannot read the public key of {}: {e} (set wg_pubkey?)",
            l.wg_interface
        )),
    }
}

/// The first address of `hostport` that a peering socket bound to
/// `listen` can send to: `[::]` binds an IPv6-only and an IPv4 socket,
/// any other address one socket of its own family. Sending to another
/// family failed at every round, with `-n` silent about it.
fn resolve_from(hostport: &str, listen: SocketAddr) -> Result<SocketAddr, String> {
    let reach = |a: &SocketAddr| match listen.ip() {
        IpAddr::V6(v6) if v6.is_unspecified() => true,
        ip => ip.is_ipv4() == a.is_ipv4(),
    };
    let all: Vec<SocketAddr> = (hostport.to_socket_addrs())
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    match all.iter().find(|a| reach(a)) {
        Some(a) => Ok(*a),
        None if all.is_empty() => Err("no address".to_string()),
        None => Err(format!(
            "{} has no address of the family [peering] listen = \"{listen}\" sends from",
            all[0].ip()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer is sent to from the socket `listen` binds: of its addresses,
    /// the first of a family that socket has.
    #[test]
    fn a_peer_resolves_to_an_address_the_listen_sends_from() {
        let l = |s: &str| s.parse::<SocketAddr>().unwrap();
        let v4 = "198.51.100.2:8071";
        let v6 = "[2001:db8::2]:8071";
        assert_eq!(resolve_from(v4, l("0.0.0.0:8071")), Ok(l(v4)));
        assert_eq!(resolve_from(v4, l("[::]:8071")), Ok(l(v4)));
        assert_eq!(resolve_from(v6, l("[::]:8071")), Ok(l(v6)));
        assert_eq!(resolve_from(v6, l("[2001:db8::1]:8071")), Ok(l(v6)));
        let e = resolve_from(v6, l("0.0.0.0:8071")).unwrap_err();
        assert!(
            e.contains("2001:db8::2") && e.contains("0.0.0.0:8071"),
            "{e}"
        );
        assert!(resolve_from(v4, l("[2001:db8::1]:8071")).is_err());
    }
    use crate::state::LinkRecord;

    /// A QBER source's CA that is no certificate is refused by the parent,
    /// naming the section, before any engine could fail to open it.
    #[test]
    fn a_qber_ca_the_engine_could_not_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let text = format!(
            "[policy]\npubkeys = [\"/k.pub\"]\n\n[qber.net]\ndriver = \"http-json\"\nurl = \"https://127.0.0.1:8443/q/{{qber_id}}\"\n\
             pointer = \"/v\"\nca = \"{}\"\n\n\
             [link.dr]\nqber = \"net\"\nqber_id = \"t\"\nwg_interface = \"wg0\"\nwg_port = 51820\n\
             addresses = [\"192.0.2.2\"]\n",
            ca.display()
        );
        let conf = crate::conf::parse("t.conf", &text).unwrap();
        let e = qber_net(&conf).unwrap_err();
        assert!(e.starts_with("[qber.net] ") && e.contains("ca"), "{e}");
        // The same section with a real CA is taken.
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        crate::sim::pki::create(dir.path(), &names(&["a"]), &names(&["S"]), &[]).unwrap();
        assert!(qber_net(&conf).is_ok());
    }

    #[test]
    fn a_proven_keys_age_counts_from_its_install() {
        let now = crate::utc::now_unix();
        let rec = |verifier: bool, at: Option<u64>| LinkRecord {
            verifier: verifier.then(|| "ab".repeat(32)),
            installed_at: at,
            ..LinkRecord::default()
        };
        let age = key_age(Some(&rec(true, Some(now - 600)))).unwrap();
        assert!((600..=602).contains(&age), "{age}");
        // The clock now before the install: unknown, so as old as can be.
        assert_eq!(key_age(Some(&rec(true, Some(now + 600)))), Some(u64::MAX));
        // No proven key, or no time kept for it (an older state file).
        assert_eq!(key_age(Some(&rec(false, Some(now)))), None);
        assert_eq!(key_age(Some(&rec(true, None))), None);
        assert_eq!(key_age(None), None);
    }
}
