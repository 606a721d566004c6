//! The OS sandbox of both processes (DESIGN §2), behind two calls:
//!
//! - [`engine`]: run by the engine right after chroot and the privilege
//!   drop, before the tokio runtime (and so any thread) exists. OpenBSD:
//!   `pledge("stdio inet sendfd")`. Linux: `no_new_privs`, a landlock
//!   ruleset that allows no file access at all and (landlock ABI >= 4) TCP
//!   connect only to [`EngineLimits::tcp_connect_ports`] and no TCP bind,
//!   then a seccomp allow-list whose default is `EPERM`, never a kill: a
//!   libc update that starts using a new system call degrades one call, it
//!   does not take the gateway down.
//! - [`parent`]: run by the parent once the engine is started and every
//!   start-up file is read, before its main loop. OpenBSD: `unveil(2)` of
//!   [`ParentPaths`], then locked; no pledge, because `SIOCSWG` (the
//!   WireGuard PSK ioctl) is allowed under no pledge promise
//!   (kern_pledge.c). Linux: a landlock ruleset with the same paths, plus
//!   what running `nft` needs.
//!
//! Both return a [`Report`] for one `event=sandbox` log line. An error is
//! fatal to the caller: the process does not run unsandboxed by accident.
//! A kernel without landlock is not an error (landlock is best effort by
//! design); the report says `landlock=not-enforced` and the seccomp filter
//! still applies.
//!
//! Touches no files itself except to open the allowed paths (Linux,
//! `O_PATH`) and to create a missing policy directory for the parent.

use crate::conf::Config;
use crate::imsg::EngineConfig;
use std::path::{Path, PathBuf};

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as os;
#[cfg(target_os = "openbsd")]
mod openbsd;
#[cfg(target_os = "openbsd")]
use openbsd as os;

/// What the engine may still do on the network after [`engine`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineLimits {
    /// TCP ports the engine may connect to (any address). Empty: none.
    pub tcp_connect_ports: Vec<u16>,
}

/// What a sandbox call put in force, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `engine` or `parent`.
    pub process: &'static str,
    /// `key=value` pairs, e.g. `("landlock", "fully-enforced")`.
    pub kv: Vec<(&'static str, String)>,
    /// False when a layer the OS offers could not be put in force (old
    /// kernel) or a configured path was missing: logged as a warning, not
    /// fatal.
    pub complete: bool,
    /// `sandbox-probe` builds only: what the sandboxed engine got when it
    /// tried to open a file, exec and connect (`open=EPERM exec=EPERM ...`).
    pub probe: Option<String>,
}

impl Report {
    fn new(process: &'static str) -> Report {
        Report {
            process,
            kv: Vec::new(),
            complete: true,
            probe: None,
        }
    }

    fn kv(&mut self, key: &'static str, value: impl std::fmt::Display) {
        self.kv.push((key, value.to_string()));
    }

    /// Logs `event=sandbox process=... k=v ...` (and `event=sandbox_probe`).
    pub fn log(&self) {
        use crate::log::{Event, Prio, event};
        let prio = if self.complete {
            Prio::Info
        } else {
            Prio::Warning
        };
        let mut ev = event(Event::Sandbox).at(prio).kv("process", self.process);
        for (k, v) in &self.kv {
            ev = ev.kv(k, v);
        }
        ev.send();
        if let Some(p) = &self.probe {
            event(Event::SandboxProbe)
                .kv("process", self.process)
                .kv("result", p)
                .send();
        }
    }
}

/// Sandboxes the engine. Call once, single-threaded, after the privilege
/// drop and before building the runtime.
pub fn engine(limits: &EngineLimits) -> Result<Report, String> {
    os::engine(limits)
}

/// The engine's promises (DESIGN §2), as ntpd's engine pledges `stdio
/// inet`: sockets it holds (inherited across exec, never received), new
/// TCP connections, and SCM_RIGHTS to send each ctl client's connection to
/// the parent. No `recvfd`: nothing hands the engine a descriptor.
pub const ENGINE_PROMISES: &str = "stdio inet sendfd";

/// pledge(2). OpenBSD: the real one. Linux, `testing` builds: an emulation
/// from OpenBSD's own table (`linux/pledge.rs`), so that a call the real
/// one would abort aborts in our tests too; off with
/// `QKDPFD_PLEDGE_EMULATION=off`. Elsewhere, and in release builds on
/// Linux: nothing.
pub fn pledge(promises: &str) -> Result<(), String> {
    os::pledge(promises)
}

/// Sandboxes the parent to [`parent_paths`] of `conf`. Call once, after
/// the engine is spawned (the engine must not inherit it: it is exec'd from
/// a path the parent no longer needs) and before the main loop.
pub fn parent(conf: &Config) -> Result<Report, String> {
    let paths = parent_paths(conf);
    // As the store would on the first activation (mode 0755, as it does):
    // a rule can only name a path that exists.
    if !conf.policy.dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&conf.policy.dir)
            .map_err(|e| format!("mkdir {}: {e}", conf.policy.dir.display()))?;
    }
    os::parent(&paths)
}

/// The TCP ports the engine connects to: each network QBER source's
/// resolved address. (The lead adds the KME addresses here.)
pub fn connect_ports(cfg: &EngineConfig) -> Vec<u16> {
    let mut ports: Vec<u16> = cfg
        .qber_net
        .values()
        .filter_map(|n| n.addr.map(|a| a.port()))
        .chain(cfg.kme.values().map(|k| k.addr.port()))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What the parent may touch after start-up — the unveil list, and the
/// core of the Linux landlock ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentPaths {
    /// Files read again on reload: the config, signify public keys, TLS
    /// files of `[kme.X]` and `[qber.X]`, the peering key.
    pub read: Vec<PathBuf>,
    /// Directories read, written and created in: state_dir (state file,
    /// dry-run output) and the policy store. They exist when [`parent`]
    /// runs (it creates a missing policy store, as activation would).
    pub rwc: Vec<PathBuf>,
    /// The incoming spool (read, renamed and removed in), if configured.
    /// One created after start-up is not seen until a restart.
    pub incoming: Option<PathBuf>,
    /// The firewall tool the parent executes (pfctl or nft).
    pub exec: Vec<PathBuf>,
    /// The control socket (unlinked at shutdown).
    pub socket: PathBuf,
    /// Directories of Unix sockets the parent connects to: wireguard-go's
    /// UAPI sockets with the userspace backend (OpenBSD's connect(2) needs
    /// write on the path once unveil is in force).
    pub connect: Vec<PathBuf>,
}

/// What the resolver reads: a reload resolves the config's host names
/// again, and a name only in /etc/hosts must still resolve then.
pub const RESOLVER_FILES: &[&str] = if cfg!(target_os = "openbsd") {
    &["/etc/hosts", "/etc/resolv.conf"]
} else {
    &[
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/nsswitch.conf",
        "/etc/host.conf",
        "/etc/gai.conf",
    ]
};

pub fn parent_paths(conf: &Config) -> ParentPaths {
    let mut read = vec![conf.path.clone()];
    read.extend(RESOLVER_FILES.iter().map(PathBuf::from));
    read.extend(conf.policy.pubkeys.iter().cloned());
    for k in conf.kme.values() {
        read.extend([k.ca.clone(), k.cert.clone(), k.key.clone()]);
    }
    for q in conf.qber.values() {
        read.extend([&q.ca, &q.cert, &q.key].into_iter().flatten().cloned());
    }
    if let Some(p) = &conf.peering {
        read.push(p.key.clone());
    }
    let rwc = vec![conf.daemon.state_dir.clone(), conf.policy.dir.clone()];
    let exec = match conf.firewall.backend {
        crate::conf::FirewallBackend::Pf => vec![conf.firewall.pfctl.clone()],
        crate::conf::FirewallBackend::Nftables => vec![conf.firewall.nft.clone()],
        crate::conf::FirewallBackend::DryRun => Vec::new(),
    };
    ParentPaths {
        read: absolute(read),
        rwc: absolute(rwc),
        incoming: absolute(conf.policy.incoming.iter().cloned().collect()).pop(),
        exec: absolute(exec),
        socket: conf.daemon.socket.clone(),
        connect: match conf.wireguard.backend {
            crate::conf::WireguardBackend::Userspace => vec![PathBuf::from(crate::conf::UAPI_DIR)],
            _ => Vec::new(),
        },
    }
}

/// Relative paths, as the parent will open them: against the working
/// directory it has now (`/` after `daemon(3)`), which it keeps.
fn absolute(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut out: Vec<PathBuf> = paths
        .into_iter()
        .map(|p| if p.is_absolute() { p } else { cwd.join(p) })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The directory a file lives in (landlock rules follow inodes: an editor
/// that replaces the file by rename would otherwise lose access to it).
fn dir_of(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(not(any(target_os = "linux", target_os = "openbsd")))]
mod os {
    //! Other systems: nothing to put in force; said loudly in the log.
    use super::{EngineLimits, ParentPaths, Report};

    fn none(process: &'static str) -> Report {
        let mut r = Report::new(process);
        r.kv("sandbox", "unavailable-on-this-os");
        r.complete = false;
        r
    }

    pub fn engine(_limits: &EngineLimits) -> Result<Report, String> {
        Ok(none("engine"))
    }

    pub fn parent(_paths: &ParentPaths) -> Result<Report, String> {
        Ok(none("parent"))
    }

    pub fn pledge(_promises: &str) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_paths_follow_the_config() {
        let text = "[daemon]\nstate_dir = \"/var/db/q\"\nsocket = \"/var/run/q.sock\"\n\
             [policy]\npubkeys = [\"/etc/signify/a.pub\"]\ndir = \"/var/db/q/policy\"\n\
             incoming = \"/var/spool/q\"\n[firewall]\nbackend = \"nftables\"\n\
             [wireguard]\nbackend = \"dry-run\"\n[qber.sim]\ndriver = \"sim\"\n\
             [link.dr]\nqber = \"sim\"\nqber_id = \"t\"\nwg_interface = \"wg0\"\n\
             wg_port = 51820\naddresses = [\"192.0.2.2\"]\n";
        let conf = crate::conf::parse("/etc/qkdpfd.conf", text).unwrap();
        let p = parent_paths(&conf);
        assert!(p.read.contains(&PathBuf::from("/etc/qkdpfd.conf")));
        assert!(p.read.contains(&PathBuf::from("/etc/hosts")));
        assert!(p.read.contains(&PathBuf::from("/etc/resolv.conf")));
        assert!(p.read.contains(&PathBuf::from("/etc/signify/a.pub")));
        assert_eq!(p.rwc, ["/var/db/q", "/var/db/q/policy"].map(PathBuf::from));
        assert_eq!(p.incoming, Some(PathBuf::from("/var/spool/q")));
        assert_eq!(p.exec, vec![conf.firewall.nft.clone()]);
        assert_eq!(p.socket, PathBuf::from("/var/run/q.sock"));
        assert!(
            p.connect.is_empty(),
            "no UAPI socket with dry-run WireGuard"
        );
        // wireguard-go's sockets, whatever the control socket's directory.
        let text = text.replace("backend = \"dry-run\"", "backend = \"userspace\"");
        let conf = crate::conf::parse("/etc/qkdpfd.conf", &text).unwrap();
        let p = parent_paths(&conf);
        assert_eq!(p.connect, [PathBuf::from(crate::conf::UAPI_DIR)]);
    }

    #[test]
    fn connect_ports_are_the_qber_sources_and_kmes() {
        let mut cfg = EngineConfig::empty();
        let net = |addr: &str| crate::imsg::QberNet {
            ca: None,
            cert: None,
            key: None,
            addr: Some(addr.parse().unwrap()),
        };
        cfg.qber_net.insert("a".into(), net("192.0.2.1:8443"));
        cfg.qber_net.insert("b".into(), net("[2001:db8::1]:443"));
        cfg.qber_net.insert("c".into(), net("192.0.2.2:8443"));
        let kme = crate::imsg::KmeNet {
            url: "https://kme:9443".into(),
            sae_id: "SAE-A".into(),
            ca: Vec::new(),
            cert: Vec::new(),
            key: zeroize::Zeroizing::new(Vec::new()),
            addr: "192.0.2.9:9443".parse().unwrap(),
            get: false,
            keys_low: 10,
        };
        cfg.kme.insert("site".into(), kme);
        assert_eq!(connect_ports(&cfg), vec![443, 8443, 9443]);
    }

    #[test]
    fn dir_of_a_bare_name_is_root() {
        assert_eq!(dir_of(Path::new("/etc/qkdpfd.conf")), PathBuf::from("/etc"));
        assert_eq!(dir_of(Path::new("x")), PathBuf::from("/"));
    }
}
