//! The `qkdsim` binary: `pki` makes the files, `serve` answers ETSI 014
//! over mutual TLS and produces keys at the link model's rate.

use qkdpfd::conf::SimLinkConf;
use qkdpfd::engine::kme::KmeClient;
use qkdpfd::sim::keyrate::{self, KeyRateConf};
use qkdpfd::sim::model::LinkModel;
use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const QKDSIM: &str = env!("CARGO_BIN_EXE_qkdsim");
const PULSE_RATE: f64 = 1e7;

fn pki(dir: &Path) {
    let out = Command::new(QKDSIM)
        .args(["pki", "--dir"])
        .arg(dir)
        .args([
            "--kme", "a", "--kme", "b", "--sae", "SAE-A", "--sae", "SAE-B", "--host", "kme.test",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pki_makes_the_files_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    for f in ["ca", "kme-a", "kme-b", "sae-SAE-A", "sae-SAE-B"] {
        let cert = std::fs::read_to_string(dir.path().join(format!("{f}.pem"))).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{f}");
        let key = dir.path().join(format!("{f}.key"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}.key");
    }
    let der = qkdpfd::tls::certs_from_pem(
        "sae",
        &std::fs::read(dir.path().join("sae-SAE-B.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        qkdpfd::tls::subject_common_name(&der[0]).as_deref(),
        Some("SAE-B")
    );
    // A second run reuses the CA: old and new certificates share one anchor.
    let ca_before = std::fs::read(dir.path().join("ca.key")).unwrap();
    let out = Command::new(QKDSIM)
        .args(["pki", "--dir"])
        .arg(dir.path())
        .args(["--sae", "SAE-C"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), ca_before);
    let bad = Command::new(QKDSIM)
        .args(["pki", "--dir"])
        .arg(dir.path())
        .args(["--sae", "../x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// The child is killed (by its own pid) when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> (Server, HashMap<String, u16>) {
    let conf = format!(
        r#"
[kme.a]
listen = "127.0.0.1:0"
kme_id = "KME-A"
sae_ids = ["SAE-A"]
ca = "ca.pem"
cert = "kme-a.pem"
key = "kme-a.key"
[kme.b]
listen = "127.0.0.1:0"
kme_id = "KME-B"
sae_ids = ["SAE-B"]
ca = "ca.pem"
cert = "kme-b.pem"
key = "kme-b.key"
[link.ab]
kmes = ["a", "b"]
pulse_rate = {PULSE_RATE:e}
max_key_count = 100000
"#
    );
    std::fs::write(dir.join("qkdsim.toml"), conf).unwrap();
    let mut child = Command::new(QKDSIM)
        .args(["serve", "--config"])
        .arg(dir.join("qkdsim.toml"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let server = Server(child);
    let mut ports = HashMap::new();
    for line in out.lines().take(2) {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((w[0], w[2], w[3]), ("kme", "listening", "on"), "{line}");
        let addr: std::net::SocketAddr = w[4].parse().unwrap();
        ports.insert(w[1].to_string(), addr.port());
    }
    assert_eq!(ports.len(), 2, "qkdsim did not report both KMEs");
    (server, ports)
}

fn client(dir: &Path, port: u16, sae: &str) -> KmeClient {
    let rd = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let key = Zeroizing::new(rd(&format!("sae-{sae}.key")));
    let url = format!("https://kme.test:{port}");
    let c = KmeClient::new(
        "a",
        &url,
        &rd("ca.pem"),
        &rd(&format!("sae-{sae}.pem")),
        key,
        None,
    )
    .unwrap();
    c.with_settings(qkdpfd::engine::kme::KmeSettings {
        http: qkdpfd::engine::https::HttpSettings {
            addr: Some(([127, 0, 0, 1], port).into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

#[test]
fn serve_answers_over_mtls_at_the_model_rate() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let (_server, ports) = serve(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The URL names kme.test (a --host SAN) and the parent-resolved
        // address is used, as the chrooted engine will do.
        let c = client(dir.path(), ports["a"], "SAE-A");
        let first = c.status("SAE-B").await.unwrap();
        assert_eq!(
            (first.source_kme_id.as_str(), first.target_kme_id.as_str()),
            ("KME-A", "KME-B")
        );
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = c.status("SAE-B").await.unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        let m = LinkModel::new(&SimLinkConf::default()).unwrap();
        let k = KeyRateConf::default();
        let expected = PULSE_RATE * keyrate::rate_per_pulse(&m, &k) / 256.0;
        let got = (second.stored_key_count - first.stored_key_count) as f64 / elapsed;
        assert!(
            expected > 10.0,
            "model rate {expected} keys/s is too low to measure"
        );
        assert!(
            got > expected / 2.0 && got < expected * 2.0,
            "{got} keys/s, model {expected}"
        );
        assert_eq!(c.stored_key_count("SAE-B"), Some(second.stored_key_count));
        // The slave's KME serves the same link.
        let b = client(dir.path(), ports["b"], "SAE-B");
        assert_eq!(b.status("SAE-A").await.unwrap().source_kme_id, "KME-B");
    });
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(QKDSIM).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_each_subcommand_and_exits_0() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let (ok, out, _) = run(args);
        assert!(ok, "{args:?}");
        for w in ["serve", "pki", "help", "--help", "qkdsim(1)"] {
            assert!(out.contains(w), "{args:?} lacks {w}:\n{out}");
        }
    }
    for args in [
        &["help", "serve"][..],
        &["serve", "--help"],
        &["serve", "-h"],
    ] {
        let (ok, out, _) = run(args);
        assert!(ok, "{args:?}");
        for w in ["--config FILE", "-v", "/sim/LINK/eve", "SIGTERM"] {
            assert!(out.contains(w), "{args:?} lacks {w}:\n{out}");
        }
    }
    for args in [&["help", "pki"][..], &["pki", "--help"], &["pki", "-h"]] {
        let (ok, out, _) = run(args);
        assert!(ok, "{args:?}");
        for w in [
            "--dir DIR",
            "--kme NAME",
            "--sae NAME",
            "--host NAME",
            "0600",
        ] {
            assert!(out.contains(w), "{args:?} lacks {w}:\n{out}");
        }
    }
}

#[test]
fn unknown_options_and_subcommands_are_named() {
    for (args, named) in [
        (&["--frobnicate"][..], "unknown option \"--frobnicate\""),
        (
            &["serve", "--config", "x", "--port"],
            "unknown option \"--port\"",
        ),
        (&["pki", "--dir", "d", "-q"], "unknown option \"-q\""),
        (&["pki", "extra"], "unknown argument \"extra\""),
        (&["frob"], "unknown subcommand \"frob\""),
        (&["help", "frob"], "no help for \"frob\""),
        (&["serve"], "serve needs --config FILE"),
        (&["serve", "--config"], "--config needs a value"),
        (&["pki"], "pki needs --dir DIR"),
    ] {
        let (ok, out, err) = run(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
    let (ok, _, err) = run(&[]);
    assert!(!ok && err.contains("usage: qkdsim serve"), "{err}");
}
