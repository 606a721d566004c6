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
