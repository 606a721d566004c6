//! Golden tests of the qkdpfd.conf parser (bgpd's regress/usr.sbin/bgpd/config):
//! each `tests/conf/NAME.conf` is parsed and the result compared with
//! `NAME.ok`: `configuration OK` and the normalised config, or the errors.
//! `UPDATE_GOLDEN=1 cargo test --test conf` rewrites the `.ok` files (read
//! the diff before committing it).

use qkdpfd::conf::{self, Config, print::normalised};
use std::fs;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conf")
}

fn inputs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    v.sort();
    assert!(v.len() >= 6, "golden inputs missing: {v:?}");
    v
}

/// What `qkdpfd -nv -f NAME.conf` would say, file named without its directory.
fn run(input: &Path) -> String {
    let name = input.file_name().unwrap().to_str().unwrap();
    let text = fs::read_to_string(input).unwrap();
    match conf::parse(name, &text) {
        Ok(c) => format!("configuration OK\n{}", normalised(&c)),
        Err(e) => e.to_string(),
    }
}

/// The `.ok` files were written on Linux; on OpenBSD the defaults differ.
fn for_this_os(expected: String) -> String {
    if cfg!(target_os = "openbsd") {
        expected
            .replace("backend = \"nftables\"", "backend = \"pf\"")
            .replace("backend = \"linux\"", "backend = \"openbsd\"")
    } else {
        expected
    }
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failed = Vec::new();
    for input in inputs() {
        let got = run(&input);
        let ok = input.with_extension("ok");
        if update {
            fs::write(&ok, &got).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&ok)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", ok.display()));
        if got != for_this_os(expected) {
            eprintln!("--- {}\n{got}", input.display());
            failed.push(input);
        }
    }
    assert!(failed.is_empty(), "output differs from .ok for {failed:?}");
}

/// parse(normalised(c)) == c: the printer loses nothing and adds nothing.
fn round_trip(c: &Config) {
    let text = normalised(c);
    let again = conf::parse(c.path.to_str().unwrap(), &text)
        .unwrap_or_else(|e| panic!("normalised config does not parse:\n{e}\n{text}"));
    assert_eq!(&again, c, "{text}");
    assert_eq!(normalised(&again), text);
}

#[test]
fn golden_round_trip() {
    let mut valid = 0;
    for input in inputs() {
        let text = fs::read_to_string(&input).unwrap();
        if let Ok(c) = conf::parse("x.conf", &text) {
            round_trip(&c);
            valid += 1;
        }
    }
    assert!(valid >= 3, "only {valid} valid golden configs");
}

/// bgpd's `bgpd-example` target: the shipped template must parse as it is.
#[test]
fn shipped_example() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/qkdpfd.conf");
    let c = conf::load(&path).unwrap_or_else(|e| panic!("etc/qkdpfd.conf:\n{e}"));
    assert_eq!(c.path, path);
    assert!(c.link.contains_key("dr") && c.kme.contains_key("site"));
    assert_eq!(c.qber["clavis"].driver, conf::QberDriver::HttpJson);
    round_trip(&c);
}

#[test]
fn load_reports_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.conf");
    let e = conf::load(&missing).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].col), (0, 0));
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{shown}"
    );

    let latin1 = dir.path().join("latin1.conf");
    fs::write(&latin1, b"[daemon]\nuser = \"caf\xe9\"\n").unwrap();
    let e = conf::load(&latin1).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].col), (2, 12), "{e}");
    assert!(e.to_string().contains(":2:12: expected UTF-8 text"), "{e}");

    let huge = dir.path().join("huge.conf");
    fs::write(&huge, "#".repeat(17 << 20)).unwrap();
    assert!(
        conf::load(&huge)
            .unwrap_err()
            .to_string()
            .contains("larger than")
    );
}

#[test]
fn default_backends_follow_the_os() {
    let text = fs::read_to_string(golden_dir().join("minimal.conf")).unwrap();
    let c = conf::parse("minimal.conf", &text).unwrap();
    assert_eq!(c.path, PathBuf::from("minimal.conf"));
    let openbsd = cfg!(target_os = "openbsd");
    let fw = [conf::FirewallBackend::Nftables, conf::FirewallBackend::Pf];
    let wg = [
        conf::WireguardBackend::Linux,
        conf::WireguardBackend::Openbsd,
    ];
    assert_eq!(c.firewall.backend, fw[openbsd as usize]);
    assert_eq!(c.wireguard.backend, wg[openbsd as usize]);
    assert_eq!(c.qber["lab"].sim, conf::SimLinkConf::default());
}

#[test]
fn every_error_has_a_position_and_they_are_sorted() {
    let text = fs::read_to_string(golden_dir().join("errors.conf")).unwrap();
    let e = conf::parse("errors.conf", &text).unwrap_err();
    assert!(e.0.len() >= 30, "{e}");
    assert!(e.0.iter().all(|e| e.line >= 1 && e.col >= 1), "{e}");
    let pos: Vec<(usize, usize)> = e.0.iter().map(|e| (e.line, e.col)).collect();
    assert!(pos.windows(2).all(|w| w[0].0 <= w[1].0), "{pos:?}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::net::IpAddr;
    use std::time::Duration;

    fn base() -> Config {
        let text = fs::read_to_string(golden_dir().join("full.conf")).unwrap();
        conf::parse("full.conf", &text).unwrap()
    }

    fn unit(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(lo),
            Just(hi),
            lo..=hi,
            (0u32..1000).prop_map(move |i| lo + f64::from(i) * (hi - lo) / 1000.0)
        ]
    }

    prop_compose! {
        fn sim()(length_km in unit(0.0, 500.0), loss in unit(0.0, 2.0), eff in unit(1e-9, 1.0),
                 dark in unit(0.0, 0.999), mis in unit(0.0, 0.5), mu in unit(1e-9, 10.0),
                 bits in 100u64..=1_000_000_000, eve in unit(0.0, 1.0), noise in unit(0.0, 0.5),
                 seed in 0..=i64::MAX as u64) -> conf::SimLinkConf {
            conf::SimLinkConf { length_km, loss_db_km: loss, detector_efficiency: eff,
                dark_count: dark, misalignment: mis, mean_photon: mu, sample_bits: bits,
                eve, noise, seed }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn normalised_parses_back(
            sim in sim(),
            poll_ms in 100u64..=3_600_000,
            scale in prop_oneof![Just(0.01), 1e-6..1e6f64],
            qber_id in "[ -~]{1,128}",
            sae_id in "[!-~]{1,64}",
            port in 1u16..,
            addrs in proptest::collection::hash_set(any::<IpAddr>(), 1..5),
            name in "[a-z][a-z0-9_]{0,30}",
        ) {
            let mut c = base();
            let lab = c.qber.get_mut("lab").unwrap();
            lab.sim = sim;
            lab.poll = Duration::from_millis(poll_ms);
            c.qber.get_mut("clavis").unwrap().scale = scale;
            c.kme.get_mut("site").unwrap().sae_id = sae_id;
            let mut l = c.link.remove("watch").unwrap();
            l.name = name.clone();
            l.qber_id = qber_id;
            l.wg_port = port;
            // IPv4-mapped addresses are refused: pf would never match them.
            l.addresses = addrs.into_iter().filter(|a| match a {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
                IpAddr::V4(_) => true,
            }).collect();
            prop_assume!(!l.addresses.is_empty() && !c.link.contains_key(&name));
            c.link.insert(name, l);
            round_trip(&c);
        }
    }
}
