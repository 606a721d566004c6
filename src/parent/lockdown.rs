//! `qkdpfd -L` (DESIGN §2, §5): lock every link from the kernel and local
//! files alone, for watchdogs, rc.d and systemd's `ExecStopPost=`.
//!
//! Nothing here resolves a name, reads a TLS file, checks a bundle or
//! touches the network: a DNS outage or a broken KME at the moment of a
//! crash must not keep an open link open. The config gives the link list
//! when it parses; when it does not, every link chain found in the kernel
//! is locked (nftables; pf needs the config to know a link's addresses).
//! The exit status is 0 only when reading the kernel back shows every link
//! locked, and never when no link was found.

use super::links::{LinkCtl, Links, OpenedBy};
use crate::conf::{Config, FirewallBackend, FirewallConf};
use crate::lock::LockReason;
use crate::log;
use crate::parent::fw;
use crate::ruleset::{self, LinkTarget};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

fn init_log() {
    log::init(Box::new(|_, line| log::to_stderr("qkdpfd: ", line)));
}

/// With a parsed config: every configured link, `process-failure`
/// recorded in the state file when that file is readable.
pub fn from_config(conf: Config) -> ExitCode {
    init_log();
    lock_all(conf)
}

/// What `-L` does once its log is set up (the guardian has its own).
pub fn lock_all(conf: Config) -> ExitCode {
    let state_path = super::state_path(&conf);
    // A live qkdpfd owns the state (it journals into it): the kernel is
    // locked all the same, the state left to it. Held until the exit.
    let owner = crate::state::own(&conf.daemon.state_dir);
    let (state, persist) = match &owner {
        Ok(None) => {
            eprintln!(
                "qkdpfd: a running qkdpfd owns {}: locking without recording it",
                conf.daemon.state_dir.display()
            );
            (Default::default(), false)
        }
        _ => match crate::state::load(&state_path) {
            Ok(s) => (s.unwrap_or_default(), true),
            Err(e) => {
                // Lock anyway; never overwrite a state file we could not read.
                eprintln!("qkdpfd: state file: {e} (locking without recording it)");
                (Default::default(), false)
            }
        },
    };
    let fw = fw::new(&conf.firewall, &conf.daemon.state_dir);
    let mut map = BTreeMap::new();
    for name in conf.link.keys() {
        // The reasons the file holds stay in it (an operator's lockdown,
        // a QBER lockdown): the next start must find them.
        let mut l = LinkCtl::restored(state.links.get(name));
        l.parent.insert(LockReason::ProcessFailure);
        map.insert(name.clone(), l);
    }
    let targets = crate::ruleset::targets(&conf).into_values().collect();
    let mut links = Links::new(map, targets, fw, state, state_path);
    links.persist_disabled = !persist;
    // The site lock where the firewall has one (one transaction for every
    // link), then as a tick: reads back, rebuilds a damaged skeleton, walks
    // the lockdown ladder for every link not shown locked (no bundle:
    // qkdpfd's own drop).
    links.lock_all(LockReason::ProcessFailure, None, OpenedBy::Auto);
    links.persist();
    links.observe_all();
    let shown: Vec<(String, bool, String)> = links
        .links
        .iter()
        .map(|(n, l)| (n.clone(), l.kernel.locked(), l.kernel.state.to_string()))
        .collect();
    verdict(&shown)
}

/// `qkdpfd -B`: the nftables include that `nftables.service` loads at boot,
/// before qkdpfd runs (DESIGN §5): qkdpfd's own table, base chains and
/// sets, with every link's chain holding qkdpfd's drop. Not a table of its
/// own: its drops would stay final after qkdpfd opens a link. Written to
/// stdout; the systemd unit regenerates it at every start.
pub fn boot_include(conf: &Config) -> ExitCode {
    if conf.firewall.backend != FirewallBackend::Nftables {
        eprintln!(
            "qkdpfd: -B is for the nftables backend (pf.conf's block rules hold every link at boot)"
        );
        return ExitCode::FAILURE;
    }
    let targets: Vec<LinkTarget> = ruleset::targets(conf).into_values().collect();
    print!(
        "{}",
        ruleset::nft::boot_script(&conf.firewall.anchor, &targets)
    );
    ExitCode::SUCCESS
}

/// Without a config (it does not parse): the default table's link chains.
pub fn without_config(path: &Path) -> ExitCode {
    init_log();
    let conf = FirewallConf::default();
    eprintln!(
        "qkdpfd: {}: no usable configuration; locking every link found in the kernel",
        path.display()
    );
    if conf.backend != FirewallBackend::Nftables {
        eprintln!("qkdpfd: pf: a link's addresses come from the config: nothing locked");
        return ExitCode::FAILURE;
    }
    let names = match fw::nft::link_chains(&conf.nft, &conf.anchor) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("qkdpfd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut nft = fw::new(&conf, Path::new("/nonexistent"));
    // Which keys are a link's only the config says: every key the table
    // dispatches is locked at once (the site lock), and each chain found
    // made a drop.
    let site = nft.lock_site(&[], None);
    let cleared: Vec<Result<(), String>> = (names.iter())
        .map(|name| {
            // Only the name matters to the drop.
            let t = LinkTarget {
                name: name.clone(),
                wg_if: "lo".into(),
                wg_port: 0,
                rdomain: 0,
                udp_rdomain: 0,
                addrs4: Vec::new(),
                addrs6: Vec::new(),
                qber: "".into(),
            };
            nft.clear(&t).map_err(|e| e.to_string())
        })
        .collect();
    let judged = fw::nft::site_drops_all(&conf.nft, &conf.anchor, &names);
    let shown = (names.into_iter().zip(cleared))
        .map(|(name, cleared)| {
            let why = match (&site, cleared, &judged) {
                (Err(e), _, _) => Some(format!("site lock: {e}")),
                (_, Err(e), _) => Some(e),
                (_, _, Err(e)) => Some(e.clone()),
                _ => None,
            };
            match why {
                None => (name, true, "site lock and drop read back".to_string()),
                Some(why) => (name, false, why),
            }
        })
        .collect::<Vec<_>>();
    verdict(&shown)
}

/// Prints what the kernel showed per link; 0 only if all locked, and some.
fn verdict(shown: &[(String, bool, String)]) -> ExitCode {
    for (name, locked, what) in shown {
        let word = if *locked { "locked" } else { "NOT LOCKED" };
        eprintln!("qkdpfd: link {name}: {word} (kernel: {what})");
    }
    if shown.is_empty() {
        eprintln!("qkdpfd: no link found: nothing locked");
        return ExitCode::FAILURE;
    }
    if shown.iter().all(|(_, l, _)| *l) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
