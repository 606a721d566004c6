//! qkdsim's own config file (qkdsim process), TOML:
//!
//! ```toml
//! [kme.a]
//! listen = "127.0.0.1:8443"
//! kme_id = "KME-A"
//! sae_ids = ["SAE-A"]              # SAEs this KME serves (client certificate CN)
//! ca = "pki/ca.pem"                # relative paths: from the config's directory
//! cert = "pki/kme-a.pem"
//! key = "pki/kme-a.key"
//!
//! [link.ab]                         # one simulated QKD link per KME pair
//! kmes = ["a", "b"]
//! pulse_rate = 1e9                  # Hz
//! key_size = 256                    # bits; min_key_size, max_key_size,
//! max_key_count = 1000              # max_key_per_request as in ETSI 014
//! ec_efficiency = 1.22              # error-correction efficiency f (sim::keyrate)
//! decoy = "infinite"                # or "vacuum+weak" (with weak_decoy = 0.1)
//! [link.ab.physics]                 # crate::conf::SimLinkConf, GYS defaults
//! length_km = 25
//!
//! [qber]                            # the QBER feed (sim::qber)
//! measure_interval = "1s"           # a new QBER measurement per link this often
//! ```

use crate::conf::SimLinkConf;
use crate::sim::keyrate::{self, Decoy, KeyRateConf};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default)]
    pub kme: BTreeMap<String, KmeSimConf>,
    #[serde(default)]
    pub link: BTreeMap<String, RawLink>,
    /// The QBER feed: `[qber] measure_interval = "1s"` (`sim::qber`).
    #[serde(default)]
    pub qber: FeedConf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmeSimConf {
    pub listen: SocketAddr,
    pub kme_id: String,
    pub sae_ids: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Shortest and longest `measure_interval` accepted.
pub const INTERVAL_MIN: Duration = Duration::from_millis(10);
const INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// `[qber]` of the qkdsim config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConf {
    #[serde(default = "default_interval", deserialize_with = "interval")]
    pub measure_interval: Duration,
}

impl Default for FeedConf {
    fn default() -> FeedConf {
        FeedConf {
            measure_interval: default_interval(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

fn interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = crate::duration::parse(&s).map_err(serde::de::Error::custom)?;
    if !(INTERVAL_MIN..=INTERVAL_MAX).contains(&v) {
        return Err(serde::de::Error::custom(
            "measure_interval must be between 10ms and 1h",
        ));
    }
    Ok(v)
}

/// A `[link.X]` as written; [`LinkSimConf`] once checked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLink {
    pub kmes: [String; 2],
    pub pulse_rate: f64,
    pub key_size: u32,
    pub min_key_size: u32,
    pub max_key_size: u32,
    pub max_key_count: u64,
    pub max_key_per_request: u64,
    pub ec_efficiency: f64,
    /// `infinite` or `vacuum+weak`.
    pub decoy: String,
    /// The weak decoy's mean photon number (`vacuum+weak`).
    pub weak_decoy: f64,
    pub physics: toml::Table,
}

impl Default for RawLink {
    fn default() -> RawLink {
        RawLink {
            kmes: Default::default(),
            pulse_rate: 1e9,
            key_size: 256,
            min_key_size: 64,
            max_key_size: 4096,
            max_key_count: 1000,
            max_key_per_request: 128,
            ec_efficiency: keyrate::EC_EFFICIENCY,
            decoy: "infinite".into(),
            weak_decoy: keyrate::WEAK_DECOY,
            physics: toml::Table::new(),
        }
    }
}

/// A checked link: limits, physics and the key rate's post-processing.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSimConf {
    pub pulse_rate: f64,
    pub key_size: u32,
    pub min_key_size: u32,
    pub max_key_size: u32,
    pub max_key_count: u64,
    pub max_key_per_request: u64,
    pub physics: SimLinkConf,
    pub key_rate: KeyRateConf,
}

impl Default for LinkSimConf {
    fn default() -> LinkSimConf {
        LinkSimConf::from_raw(
            &RawLink::default(),
            SimLinkConf::default(),
            KeyRateConf::default(),
        )
    }
}

impl LinkSimConf {
    fn from_raw(l: &RawLink, physics: SimLinkConf, key_rate: KeyRateConf) -> LinkSimConf {
        LinkSimConf {
            pulse_rate: l.pulse_rate,
            key_size: l.key_size,
            min_key_size: l.min_key_size,
            max_key_size: l.max_key_size,
            max_key_count: l.max_key_count,
            max_key_per_request: l.max_key_per_request,
            physics,
            key_rate,
        }
    }
}

impl SimConfig {
    /// Reads and checks a config file; relative paths become relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<SimConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        SimConfig::parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> Result<SimConfig, String> {
        let mut cfg: SimConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        for k in cfg.kme.values_mut() {
            for p in [&mut k.ca, &mut k.cert, &mut k.key] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Names, SAE uniqueness (an SAE ID must route to one KME), one link
    /// per pair, and every link's limits and physics.
    pub fn check(&self) -> Result<(), String> {
        if self.kme.is_empty() {
            return Err("no [kme.X] section".into());
        }
        let mut saes = BTreeSet::new();
        for (name, k) in &self.kme {
            if k.kme_id.is_empty() || k.sae_ids.is_empty() {
                return Err(format!("kme.{name}: kme_id and sae_ids must not be empty"));
            }
            for s in &k.sae_ids {
                if !crate::sim::pki::valid_name(s) || !saes.insert(s.clone()) {
                    return Err(format!(
                        "kme.{name}: SAE ID {s:?} is malformed or served twice"
                    ));
                }
            }
        }
        let mut pairs = BTreeSet::new();
        for (name, l) in &self.link {
            let [a, b] = &l.kmes;
            if a == b || !self.kme.contains_key(a) || !self.kme.contains_key(b) {
                return Err(format!(
                    "link.{name}: kmes must name two different [kme.X] sections"
                ));
            }
            if !pairs.insert((a.min(b).clone(), a.max(b).clone())) {
                return Err(format!("link.{name}: a second link between {a} and {b}"));
            }
            self.link_conf(name)
                .map_err(|e| format!("link.{name}: {e}"))?;
        }
        Ok(())
    }

    /// The checked settings of `[link.NAME]`.
    pub fn link_conf(&self, name: &str) -> Result<LinkSimConf, String> {
        let l = self.link.get(name).ok_or("no such link")?;
        if !(l.pulse_rate.is_finite() && l.pulse_rate > 0.0 && l.pulse_rate <= 1e11) {
            return Err("pulse_rate must be in (0, 1e11] Hz".into());
        }
        let sizes_ok = [l.key_size, l.min_key_size, l.max_key_size]
            .iter()
            .all(|s| s % 8 == 0)
            && 8 <= l.min_key_size
            && l.min_key_size <= l.key_size
            && l.key_size <= l.max_key_size
            && l.max_key_size <= 65536;
        if !sizes_ok {
            return Err(
                "need 8 <= min_key_size <= key_size <= max_key_size <= 65536, multiples of 8"
                    .into(),
            );
        }
        if !(1..=1_000_000).contains(&l.max_key_count)
            || !(1..=10_000).contains(&l.max_key_per_request)
        {
            return Err("max_key_count must be 1..=1000000, max_key_per_request 1..=10000".into());
        }
        let physics = physics(&l.physics)?;
        crate::sim::model::LinkModel::new(&physics)?;
        let key_rate = key_rate(l)?;
        key_rate.check(physics.mean_photon)?;
        Ok(LinkSimConf::from_raw(l, physics, key_rate))
    }
}

/// `ec_efficiency`, `decoy` and `weak_decoy` of a `[link.X]`.
fn key_rate(l: &RawLink) -> Result<KeyRateConf, String> {
    let decoy = match l.decoy.as_str() {
        "infinite" => Decoy::Infinite,
        "vacuum+weak" => Decoy::VacuumWeak { weak: l.weak_decoy },
        other => {
            return Err(format!(
                "decoy must be \"infinite\" or \"vacuum+weak\", found \"{}\"",
                crate::text::printable(other, 32)
            ));
        }
    };
    Ok(KeyRateConf {
        ec_efficiency: l.ec_efficiency,
        decoy,
    })
}

/// `[link.X.physics]` over the defaults: only known keys, each optional.
fn physics(over: &toml::Table) -> Result<SimLinkConf, String> {
    let mut base = toml::Table::try_from(SimLinkConf::default()).map_err(|e| e.to_string())?;
    for (k, v) in over {
        if !base.contains_key(k) {
            return Err(format!("physics: unknown key {k}"));
        }
        base.insert(k.clone(), v.clone());
    }
    SimLinkConf::deserialize(toml::Value::Table(base)).map_err(|e| format!("physics: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[kme.a]
listen = "127.0.0.1:0"
kme_id = "KME-A"
sae_ids = ["SAE-A"]
ca = "ca.pem"
cert = "kme-a.pem"
key = "/abs/kme-a.key"
[kme.b]
listen = "127.0.0.1:0"
kme_id = "KME-B"
sae_ids = ["SAE-B"]
ca = "ca.pem"
cert = "kme-b.pem"
key = "kme-b.key"
[link.ab]
kmes = ["a", "b"]
pulse_rate = 1e6
[link.ab.physics]
length_km = 50
"#;

    #[test]
    fn parses_with_defaults_and_relative_paths() {
        let c = SimConfig::parse(OK, Path::new("/etc/q")).unwrap();
        assert_eq!(c.kme["a"].ca, Path::new("/etc/q/ca.pem"));
        assert_eq!(c.kme["a"].key, Path::new("/abs/kme-a.key"));
        let l = c.link_conf("ab").unwrap();
        assert_eq!(
            (l.pulse_rate, l.key_size, l.physics.length_km),
            (1e6, 256, 50.0)
        );
        assert_eq!(
            l.physics.detector_efficiency,
            SimLinkConf::default().detector_efficiency
        );
        assert_eq!(l.key_rate, KeyRateConf::default());
        let weak = OK.replace(
            "pulse_rate = 1e6",
            "decoy = \"vacuum+weak\"\nweak_decoy = 0.05\nec_efficiency = 1.1",
        );
        let c = SimConfig::parse(&weak, Path::new("/")).unwrap();
        assert_eq!(
            c.link_conf("ab").unwrap().key_rate,
            KeyRateConf {
                ec_efficiency: 1.1,
                decoy: Decoy::VacuumWeak { weak: 0.05 },
            }
        );
    }

    #[test]
    fn refuses_bad_configs() {
        let bad = [
            OK.replace("length_km = 50", "length = 50"),
            OK.replace("pulse_rate = 1e6", "pulse_rate = -1.0"),
            OK.replace("pulse_rate = 1e6", "key_size = 100"),
            OK.replace("kmes = [\"a\", \"b\"]", "kmes = [\"a\", \"a\"]"),
            OK.replace("SAE-B", "SAE-A"),
            OK.replace("kme_id = \"KME-A\"", "kme_id = \"KME-A\"\nextra = 1"),
            OK.replace("pulse_rate = 1e6", "decoy = \"two\""),
            OK.replace("pulse_rate = 1e6", "ec_efficiency = 0.5"),
            OK.replace(
                "pulse_rate = 1e6",
                "decoy = \"vacuum+weak\"\nweak_decoy = 0.6",
            ),
        ];
        for b in bad {
            assert!(SimConfig::parse(&b, Path::new("/")).is_err(), "{b}");
        }
    }

    #[test]
    fn feed_conf_parses_and_checks_the_interval() {
        let c: FeedConf = toml::from_str("measure_interval = \"250ms\"").unwrap();
        assert_eq!(c.measure_interval, Duration::from_millis(250));
        let d: FeedConf = toml::from_str("").unwrap();
        assert_eq!(d, FeedConf::default());
        for bad in [
            "measure_interval = \"1ms\"",
            "measure_interval = 5",
            "x = 1",
        ] {
            assert!(toml::from_str::<FeedConf>(bad).is_err(), "{bad}");
        }
    }
}
