//! `qkdpfd.conf` (DESIGN §3): the per-gateway facts. Read by the parent (and
//! by `qkdctl` for `policy verify`); the engine gets a checked copy over fd 3.
//!
//! Types here are the checked result. `parse` turns TOML text into them and
//! reports every error as `file:line:col: what was expected`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod parse;
pub mod print;

pub use parse::{ConfError, ConfErrors, load, parse};

pub const CONFFILE: &str = "/etc/qkdpfd.conf";

/// Where wireguard-go (and wireguard-tools) keep their UAPI sockets: the
/// userspace WireGuard backend connects there, and the parent's sandbox
/// keeps the directory readable.
pub const UAPI_DIR: &str = "/var/run/wireguard";

pub use crate::names::valid_link_name;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The file this came from (for messages).
    pub path: PathBuf,
    pub daemon: DaemonConf,
    pub policy: PolicyConf,
    pub firewall: FirewallConf,
    pub wireguard: WireguardConf,
    pub peering: Option<PeeringConf>,
    pub kme: BTreeMap<String, KmeConf>,
    pub qber: BTreeMap<String, QberConf>,
    pub link: BTreeMap<String, LinkConf>,
    /// `[testing]`: accepted only by a build with the `testing` feature.
    pub testing: TestingConf,
}

/// Test-only timing (DESIGN allows tests to shorten `rotate`): parsed only
/// when the crate is built with the `testing` feature; a production build
/// refuses the section as unknown.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TestingConf {
    /// Replaces every link's policy `rotate`.
    pub rotate: Option<Duration>,
    /// Replaces every link's policy `max_key_age`.
    pub max_key_age: Option<Duration>,
    /// Rotations without jitter (benchmarks).
    pub no_jitter: bool,
    /// Re-read installed PSKs this often instead of once per `rotate`.
    pub psk_check: Option<Duration>,
    /// Executed as the engine instead of this binary (the hostile-engine
    /// tests put their fake engine here).
    pub engine: Option<PathBuf>,
    /// Seconds added to every wall-clock reading (a clock step, for the
    /// fault tests); 0: none.
    pub wall_clock_offset: i64,
    /// The running parent panics when a reload takes this config (the
    /// fault tests prove the panic hook with it); never at start-up.
    pub panic_on_reload: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonConf {
    pub user: String,
    pub chroot: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub syslog_facility: String,
    pub metrics: Option<SocketAddr>,
    pub on_stop: OnStop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStop {
    Keep,
    Lockdown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyConf {
    pub pubkeys: Vec<PathBuf>,
    pub dir: PathBuf,
    pub incoming: Option<PathBuf>,
    /// How long before the active bundle's `not_after` the daemon warns
    /// (`policy_expiring`, daily); zero: never.
    pub expiry_warning: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallBackend {
    Pf,
    Nftables,
    DryRun,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FirewallConf {
    pub backend: FirewallBackend,
    /// pf anchor root / nft table name.
    pub anchor: String,
    /// Path of pfctl (default /sbin/pfctl); tests point it at a recorder.
    pub pfctl: PathBuf,
    /// Path of nft (default /usr/sbin/nft).
    pub nft: PathBuf,
    /// A lockdown lets WireGuard's handshake messages through (never its
    /// data), so that a link held for `no-session` can make a new session:
    /// `[wireguard] new_session` with nftables. Not a config key.
    #[serde(skip)]
    pub handshakes: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireguardBackend {
    Openbsd,
    Linux,
    Userspace,
    DryRun,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireguardConf {
    pub backend: WireguardBackend,
    /// After each rotation the master re-creates its peer so that a new
    /// session starts under the new PSK at once, and a link that was
    /// locked opens only on a session made after its lockdown (issue 13);
    /// off, the PSK protects traffic from WireGuard's own next rekey (up to
    /// 120 s). Default on, except with the dry-run backend.
    pub new_session: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeeringConf {
    pub listen: SocketAddr,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KmeConf {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sae_id: String,
    /// How enc_keys and dec_keys are asked: POST (ETSI 014's main form) or
    /// GET with query parameters, for KMEs that only answer that.
    pub method: KmeMethod,
    /// `kme_keys_low` when the KME's stored_key_count for a link falls
    /// below this; zero: never.
    pub keys_low: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KmeMethod {
    Post,
    Get,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QberDriver {
    Sim,
    Etsi015,
    Prometheus,
    HttpJson,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QberConf {
    pub driver: QberDriver,
    pub url: Option<String>,
    pub poll: Duration,
    /// http-json: JSON pointer to the value.
    pub pointer: Option<String>,
    /// http-json: multiply the value by this (0.01 for percent).
    pub scale: f64,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// sim: the physical link model.
    pub sim: SimLinkConf,
}

#[cfg(test)]
impl QberConf {
    /// A `driver` section with no URL, TLS files or pointer, polled each
    /// second: what a test adds to.
    pub(crate) fn of(driver: QberDriver) -> QberConf {
        QberConf {
            driver,
            url: None,
            poll: std::time::Duration::from_secs(1),
            pointer: None,
            scale: 1.0,
            ca: None,
            cert: None,
            key: None,
            sim: SimLinkConf::default(),
        }
    }
}

/// Physical parameters of a simulated QKD link (reference/qkd-physics.md,
/// decoy-state BB84 with the GYS parameter set as defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimLinkConf {
    pub length_km: f64,
    pub loss_db_km: f64,
    pub detector_efficiency: f64,
    pub dark_count: f64,
    pub misalignment: f64,
    pub mean_photon: f64,
    /// Sifted bits per QBER estimate (finite-sample fluctuation).
    pub sample_bits: u64,
    /// Fraction of photons intercepted and resent at start (0..=1).
    pub eve: f64,
    /// Extra QBER from noise at start.
    pub noise: f64,
    pub seed: u64,
}

impl Default for SimLinkConf {
    fn default() -> SimLinkConf {
        SimLinkConf {
            length_km: 25.0,
            loss_db_km: 0.21,
            detector_efficiency: 0.045,
            dark_count: 1.7e-6,
            misalignment: 0.033,
            mean_photon: 0.48,
            sample_bits: 20_000,
            eve: 0.0,
            noise: 0.0,
            seed: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Master,
    Slave,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkConf {
    /// `^[a-z][a-z0-9_]{0,30}$`
    pub name: String,
    /// Name of a `[qber.X]` section. This and the KME are the same in many
    /// links of a site, the far end's SAE, address and key in every link to
    /// one far gateway: one shared copy each ([`crate::names::Names`]).
    pub qber: Arc<str>,
    pub qber_id: String,
    /// Key agreement (issue 3); optional until then, all-or-nothing.
    pub kme: Option<Arc<str>>,
    pub peer_sae_id: Option<Arc<str>>,
    pub role: Option<Role>,
    pub peer: Option<Arc<str>>,
    pub peer_pubkey: Option<Arc<str>>,
    pub wg_interface: String,
    pub wg_peer: Option<String>,
    /// This gateway's own WireGuard public key on `wg_interface` (base64);
    /// read from the interface when absent (needed with the dry-run backend).
    pub wg_pubkey: Option<String>,
    pub wg_port: u16,
    /// pf: the routing domain the link's states live in (`pfctl -V`).
    pub rdomain: u32,
    /// pf: the routing domain of the tunnel's own UDP, that of wg(4)'s
    /// `wgrtable` (0 unless set, whatever the interface's rdomain).
    pub udp_rdomain: u32,
    pub addresses: Vec<IpAddr>,
}

impl LinkConf {
    pub fn addrs4(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().copied().filter(IpAddr::is_ipv4)
    }
    pub fn addrs6(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().copied().filter(IpAddr::is_ipv6)
    }
}
