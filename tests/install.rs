//! The packaging: `make install` with GNU make and BSD make (Debian's
//! `bmake`) gives the same tree, `make uninstall` removes it, `make bundle`
//! signs the sample bundle so that `qkdctl policy verify` accepts it, the
//! rc.d script parses, and the systemd unit passes `systemd-analyze verify`
//! where that exists.
//!
//! The makes run with fake binaries (`RELEASE=`), so no release build is
//! needed. Missing bmake or signify: skipped loudly, unless CI=true, where
//! the test fails (scripts/setup-debian.sh installs both).

mod common;

use common::bundle::{SIGNIFY, TestKeys, require_tool};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `make_tool ARGS...` in the repository, with none of an outer make's
/// flags (GNU make's MAKEFLAGS, e.g. --jobserver-auth, would upset bmake).
fn make(make_tool: &str, args: &[&str]) -> Output {
    let out = Command::new(make_tool)
        .current_dir(repo())
        .args(args)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("MAKEFILES")
        .output()
        .unwrap_or_else(|e| panic!("{make_tool}: {e}"));
    assert!(
        out.status.success(),
        "{make_tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Three executable stand-ins for target/release/{qkdpfd,qkdctl,qkdsim}.
fn fake_release() -> TempDir {
    let d = TempDir::new().unwrap();
    for b in ["qkdpfd", "qkdctl", "qkdsim"] {
        let p = d.path().join(b);
        fs::write(&p, format!("#!/bin/sh\necho {b}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

/// Every path under `root` with its mode and (for files) contents.
fn tree(root: &Path) -> BTreeMap<String, (u32, Option<Vec<u8>>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Option<Vec<u8>>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = md.permissions().mode() & 0o7777;
            if md.is_dir() {
                out.insert(rel + "/", (mode, None));
                walk(root, &p, out);
            } else {
                out.insert(rel, (mode, Some(fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn files(t: &BTreeMap<String, (u32, Option<Vec<u8>>)>) -> Vec<&str> {
    t.iter()
        .filter(|(_, v)| v.1.is_some())
        .map(|(k, _)| k.as_str())
        .collect()
}

fn install_into(make_tool: &str, release: &Path, destdir: &Path, extra: &[&str]) {
    let rel = format!("RELEASE={}", release.display());
    let dest = format!("DESTDIR={}", destdir.display());
    let mut args = vec!["install", rel.as_str(), dest.as_str()];
    args.extend_from_slice(extra);
    make(make_tool, &args);
}

#[test]
fn install_is_the_same_with_bsd_and_gnu_make() {
    if !require_tool("bmake") || !require_tool("make") {
        return;
    }
    let release = fake_release();
    let (gnu, bsd) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    install_into("make", release.path(), gnu.path(), &[]);
    install_into("bmake", release.path(), bsd.path(), &[]);
    let (g, b) = (tree(gnu.path()), tree(bsd.path()));
    assert_eq!(
        files(&g),
        files(&b),
        "GNU make and bmake installed different files"
    );
    assert_eq!(g, b, "same files, different modes or contents");

    let want = [
        ("usr/local/sbin/qkdpfd", 0o555),
        ("usr/local/sbin/qkdctl", 0o555),
        ("usr/local/bin/qkdsim", 0o555),
        ("usr/local/man/man1/qkdsim.1", 0o444),
        ("usr/local/man/man8/qkdpfd.8", 0o444),
        ("usr/local/man/man8/qkdctl.8", 0o444),
        ("usr/local/man/man5/qkdpfd.conf.5", 0o444),
        ("usr/local/man/man5/qkdpfd-policy.5", 0o444),
        ("usr/local/share/examples/qkdpfd/qkdpfd.conf", 0o444),
        ("usr/local/share/examples/qkdpfd/qkdpfd-sim.conf", 0o444),
        ("usr/local/share/examples/qkdpfd/rc.d/qkdpfd", 0o444),
        (
            "usr/local/share/examples/qkdpfd/systemd/qkdpfd.service",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/pf-anchors/pf.conf.example",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/pf-anchors/bundle/policy.toml",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/pf-anchors/bundle/anchors/open.pf",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/pf-anchors/bundle/anchors/lockdown.nft",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/contrib/siem/rsyslog/qkdpfd.conf",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/contrib/siem/wazuh/qkdpfd_rules.xml",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/contrib/siem/sigma/qkdpfd_qber_lockdown.yml",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/contrib/prometheus/qkdpfd.rules.yml",
            0o444,
        ),
        (
            "usr/local/share/examples/qkdpfd/contrib/grafana/qkdpfd.json",
            0o444,
        ),
        // Linux: the unit is installed where systemd looks for local units.
        ("usr/local/lib/systemd/system/qkdpfd.service", 0o444),
    ];
    for (path, mode) in want {
        let got = g
            .get(path)
            .unwrap_or_else(|| panic!("{path} not installed"));
        assert_eq!(got.0, mode, "{path}: mode {:o}", got.0);
    }
    assert!(
        !g.contains_key("etc/rc.d/qkdpfd"),
        "rc.d script installed outside OpenBSD"
    );
    let bin = &g["usr/local/sbin/qkdpfd"].1;
    assert_eq!(bin.as_deref(), Some(&b"#!/bin/sh\necho qkdpfd\n"[..]));

    // uninstall leaves nothing but empty directories it did not make.
    let dest = format!("DESTDIR={}", gnu.path().display());
    make("make", &["uninstall", &dest]);
    let left = tree(gnu.path());
    assert!(
        files(&left).is_empty(),
        "left after uninstall: {:?}",
        files(&left)
    );
}

#[test]
fn install_on_openbsd_puts_the_rc_script_in_etc_rc_d_with_prefix() {
    if !require_tool("bmake") {
        return;
    }
    let release = fake_release();
    let dest = TempDir::new().unwrap();
    let extra = ["OPSYS=OpenBSD", "PREFIX=/opt/qkd"];
    install_into("bmake", release.path(), dest.path(), &extra);
    let t = tree(dest.path());
    let rc = t
        .get("etc/rc.d/qkdpfd")
        .expect("OpenBSD: /etc/rc.d/qkdpfd installed");
    assert_eq!(rc.0, 0o555);
    let text = String::from_utf8(rc.1.clone().unwrap()).unwrap();
    assert!(
        text.contains("daemon=\"/opt/qkd/sbin/qkdpfd\""),
        "PREFIX not applied:\n{text}"
    );
    assert!(t.contains_key("opt/qkd/sbin/qkdpfd"));
    assert!(
        !files(&t).iter().any(|f| f.contains("lib/systemd")),
        "systemd unit installed on OpenBSD"
    );
    let dest_arg = format!("DESTDIR={}", dest.path().display());
    make(
        "bmake",
        &["uninstall", &dest_arg, "OPSYS=OpenBSD", "PREFIX=/opt/qkd"],
    );
    assert!(files(&tree(dest.path())).is_empty());
}

#[test]
fn install_refuses_without_built_binaries() {
    if !require_tool("make") {
        return;
    }
    let empty = TempDir::new().unwrap();
    let dest = TempDir::new().unwrap();
    let out = Command::new("make")
        .current_dir(repo())
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .args([
            "install",
            &format!("RELEASE={}", empty.path().display()),
            &format!("DESTDIR={}", dest.path().display()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run make build first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files(&tree(dest.path())).is_empty());
}

/// A config for `qkdctl policy verify -f`: one link, dry-run backends, so
/// the check does not depend on /etc/qkdpfd.conf or on root.
fn verify_config(dir: &Path, pubkey: &Path) -> PathBuf {
    let state = dir.join("state");
    let conf = format!(
        r#"[daemon]
state_dir = "{state}"
[policy]
pubkeys = ["{pubkey}"]
dir = "{state}/policy"
[firewall]
backend = "dry-run"
[wireguard]
backend = "dry-run"
[qber.sim]
driver = "sim"
[link.dr]
qber = "sim"
qber_id = "hq-dr-1"
wg_interface = "wg0"
wg_port = 51820
addresses = ["192.0.2.2", "2001:db8::2"]
"#,
        state = state.display(),
        pubkey = pubkey.display()
    );
    let p = dir.join("qkdpfd.conf");
    fs::write(&p, conf).unwrap();
    p
}

fn qkdctl_verify(conf: &Path, pubkey: &Path, bundle: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qkdctl"))
        .arg("-f")
        .arg(conf)
        .args(["policy", "verify", "-p"])
        .arg(pubkey)
        .arg(bundle)
        .output()
        .unwrap()
}

#[test]
fn make_bundle_signs_a_bundle_that_qkdctl_and_signify_accept() {
    if !require_tool("sha256sum") {
        return;
    }
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let work = TempDir::new().unwrap();
    let conf = verify_config(work.path(), &keys.pubkey);
    for (make_tool, serial) in [("make", "7"), ("bmake", "8")] {
        if !require_tool(make_tool) {
            continue;
        }
        let out = work.path().join(format!("bundle-{make_tool}"));
        make(
            make_tool,
            &[
                "bundle",
                &format!("SIGNIFY={SIGNIFY}"),
                &format!("SECKEY={}", keys.seckey.display()),
                &format!("BUNDLE_OUT={}", out.display()),
                &format!("SERIAL={serial}"),
            ],
        );
        let mut names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["SHA256.sig", "anchors", "policy.toml"]);

        let v = qkdctl_verify(&conf, &keys.pubkey, &out);
        let stdout = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.status.success(),
            "{make_tool}: qkdctl policy verify refused the bundle:\n{stdout}{}",
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(stdout.contains(&format!("OK serial={serial}")), "{stdout}");

        // DESIGN §4: run in the bundle directory, signify -C accepts it too.
        let c = Command::new(SIGNIFY)
            .current_dir(&out)
            .args(["-C", "-p"])
            .arg(&keys.pubkey)
            .args(["-x", "SHA256.sig"])
            .output()
            .unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));

        // A byte changed after signing is refused.
        let open = out.join("anchors/open.nft");
        let mut text = fs::read_to_string(&open).unwrap();
        text.push_str("accept\n");
        fs::write(&open, text).unwrap();
        let v = qkdctl_verify(&conf, &keys.pubkey, &out);
        assert_eq!(v.status.code(), Some(1), "tampered bundle accepted");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(all.contains("digest"), "{all}");
    }
}

#[test]
fn rc_script_parses_and_follows_rcctl_conventions() {
    let out = Command::new("sh")
        .args(["-n", "rc.d/qkdpfd"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(repo().join("rc.d/qkdpfd")).unwrap();
    assert!(text.starts_with("#!/bin/ksh\n"));
    for line in [
        "daemon=\"/usr/local/sbin/qkdpfd\"",
        // Set before rc.subr, which takes it as the default (30 s otherwise).
        "daemon_timeout=\"120\"\n\n. /etc/rc.d/rc.subr",
        ". /etc/rc.d/rc.subr",
        "rc_exec \"${daemon} -n ${daemon_flags}\"",
        "rc_cmd $1",
    ] {
        assert!(text.contains(line), "rc.d/qkdpfd lacks {line:?}");
    }
    // The default pexp is right only while the parent keeps its argv.
    let src = fs::read_to_string(repo().join("src/parent/mod.rs")).unwrap();
    assert!(!src.contains("setproctitle"), "parent retitles: set pexp");
}

#[test]
fn systemd_unit_verifies() {
    let text = fs::read_to_string(repo().join("etc/systemd/qkdpfd.service")).unwrap();
    for line in [
        "Type=forking",
        "ExecStartPre=/usr/local/sbin/qkdpfd -n",
        "ExecStart=/usr/local/sbin/qkdpfd\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.contains(line), "unit lacks {line:?}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("PrivateNetwork=")),
        "the daemon needs the host's network"
    );
    let has_analyze = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_analyze {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: systemd-analyze is required (scripts/setup-debian.sh installs systemd)"
        );
        let msg = "!!! SKIPPED systemd-analyze verify: not installed !!!\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
        return;
    }
    // Installed under a temporary PREFIX so ExecStart= and the man pages
    // named in Documentation= exist.
    let release = fake_release();
    let root = TempDir::new().unwrap();
    let prefix = root.path().join("usr/local");
    make(
        "make",
        &[
            "install",
            &format!("RELEASE={}", release.path().display()),
            &format!("PREFIX={}", prefix.display()),
        ],
    );
    let unit = prefix.join("lib/systemd/system/qkdpfd.service");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", prefix.join("man"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
