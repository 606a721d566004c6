//! A request only the parent runs is read by the parent from the client's
//! own connection; the engine only peeks at it (src/imsg/creds.rs,
//! src/engine/control.rs). Through the real engine: a bundle of several
//! MiB loads, a bundle sent slowly in pieces loads, and a line the client
//! never finishes runs nothing.
#![cfg(target_os = "linux")]

mod common;

use common::gateway::{Gateway, LOCKDOWN_NFT, OPEN_NFT, policy};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// `n` bytes of comment lines (`#` starts a comment in TOML and nft alike).
fn padding(n: usize) -> String {
    let line = format!("# {}\n", "p".repeat(78));
    line.repeat(n / line.len())
}

fn serial(show_policy_json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(show_policy_json).ok()?;
    v["serial"].as_u64()
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() {
            dir_size(&e.path())
        } else {
            md.len()
        };
    }
    total
}

/// One request line on a fresh connection, written in `pieces` 300 ms
/// apart (the last may lack its newline: then the client stops writing);
/// the daemon's one reply line.
fn raw_request(gw: &Gateway, pieces: &[&[u8]]) -> String {
    let mut c = UnixStream::connect(gw.path("qkdpfd.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        c.write_all(p).unwrap();
    }
    if !pieces.last().is_some_and(|p| p.ends_with(b"\n")) {
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    line
}

#[test]
fn a_bundle_of_megabytes_is_read_by_the_parent_from_the_client() {
    let Some(mut gw) = Gateway::new("qcr1", "200ms", "") else {
        return;
    };
    gw.start();
    // Three files of almost 1 MiB each (the per-file limit): a ~3 MiB
    // tar, ~4 MiB of base64 on the wire, far past the engine's look.
    let pad = padding(1_000_000);
    let b = gw.bundle(
        "big",
        &format!("{}{pad}", policy(7, true, "")),
        &format!("{OPEN_NFT}{pad}"),
        &format!("{LOCKDOWN_NFT}{pad}"),
    );
    assert!(dir_size(&b) > 3_000_000, "{}", dir_size(&b));
    let out = gw.ctl_ok(&["policy", "load", b.to_str().unwrap()]);
    assert!(out.contains("serial=7"), "{out}");
    let show = gw.ctl_ok(&["-j", "show", "policy"]);
    assert_eq!(serial(&show), Some(7), "{show}");
    gw.wait_state("open", Duration::from_secs(10));
    // The operator's commands take the same road.
    gw.ctl_ok(&["lockdown", "dr"]);
    assert_eq!(gw.state(), "lockdown");
    gw.ctl_ok(&["unlock", "dr"]);
    gw.wait_state("open", Duration::from_secs(10));
    let log = gw.log();
    assert!(!log.contains("ctl_denied"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_slow_bundle_loads_and_an_unfinished_line_runs_nothing() {
    let Some(mut gw) = Gateway::new("qcr2", "200ms", "") else {
        return;
    };
    gw.start();
    let b = gw.bundle("b", &policy(9, true, ""), OPEN_NFT, LOCKDOWN_NFT);
    // What qkdctl sends for a directory.
    let request = qkdpfd::ctl::pack::policy_load_request(&b).unwrap();
    let line = format!("{}\n", serde_json::to_string(&request).unwrap());
    let bytes = line.as_bytes();
    // The start, a pause, then the rest in two pieces.
    let (a, rest) = bytes.split_at(20);
    let (m, z) = rest.split_at(rest.len() / 2);
    let reply = raw_request(&gw, &[a, m, z]);
    assert!(reply.contains("serial=9"), "{reply}\n{}", gw.log());
    // A bundle whose client stops half way: nothing runs, the parent
    // says why, the active policy stays.
    let reply = raw_request(&gw, &[&bytes[..bytes.len() / 2]]);
    assert!(reply.contains("denied"), "{reply}");
    assert!(
        reply.contains("no request on the client's connection"),
        "{reply}"
    );
    let show = gw.ctl_ok(&["-j", "show", "policy"]);
    assert_eq!(serial(&show), Some(9), "{show}");
}
