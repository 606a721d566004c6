//! qkdctl end to end: the built binary against a fake control socket that
//! records the request line and answers canned replies.

use base64::Engine as _;
use qkdpfd::lock::{Band, Enforcement, LockReason, Reasons};
use qkdpfd::policy::params::LinkPolicy;
use qkdpfd::proto::ctl::{DaemonStatus, ErrorCode, KeyInfo, LinkInfo, PolicyInfo, Reply, Request};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qkdctl");

/// What one run of qkdctl did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// The request line the fake daemon received, if qkdctl connected.
    request: Option<String>,
}

/// Runs `qkdctl -s <fake> args…`; the fake answers `replies`, one per line,
/// then closes.
fn run(args: &[&str], replies: &[Reply]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qkdpfd.sock");
    let lines: Vec<String> = replies
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    run_at(&sock, args, lines)
}

fn run_at(sock: &Path, args: &[&str], replies: Vec<String>) -> Run {
    let listener = UnixListener::bind(sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let server = thread::spawn(move || serve_one(listener, replies, &stop));
    let mut all = vec!["-s", sock.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = Command::new(BIN).args(&all).output().unwrap();
    done.store(true, Ordering::SeqCst);
    finish(out, server.join().unwrap())
}

fn finish(out: Output, request: Option<String>) -> Run {
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        request,
    }
}

/// Accepts one connection (until `stop`), reads the request line, answers.
fn serve_one(listener: UnixListener, replies: Vec<String>, stop: &AtomicBool) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut conn = conn;
    for r in replies {
        // qkdctl may already be gone (it refused the reply): not our failure.
        if writeln!(conn, "{r}").is_err() {
            break;
        }
    }
    Some(line)
}

fn ok(msg: &str) -> Reply {
    Reply::ok(msg)
}

fn link_dr() -> LinkInfo {
    LinkInfo {
        lockdown_failed: false,
        wg_peer_removed: false,
        name: "dr".into(),
        enforcement: Enforcement::Lockdown,
        reasons: [LockReason::Qber, LockReason::Operator]
            .into_iter()
            .collect(),
        band: Some(Band::Critical),
        qber: Some(0.0912),
        sample_age_secs: Some(1.25),
        threshold: Some(0.08),
        trip_count: 3,
        manual_hold: true,
        qber_source: "sim".into(),
        keys: Some(KeyInfo {
            role: "master".into(),
            epoch: 12,
            installed_epoch: Some(11),
            installed_key_id: Some("bc490419-7d60-487f-adc1-4ddcc177c139".into()),
            psk_fingerprint: Some("a1b2c3d4".into()),
            key_age_secs: Some(42.0),
            rotations_ok: 11,
            rotations_failed: 2,
            in_round: true,
            held: false,
            stored_key_count: Some(950),
        }),
    }
}

fn link_hq() -> LinkInfo {
    LinkInfo {
        lockdown_failed: false,
        wg_peer_removed: false,
        name: "headquarters".into(),
        enforcement: Enforcement::Open,
        reasons: Reasons::EMPTY,
        band: Some(Band::Nominal),
        qber: Some(0.021),
        sample_age_secs: Some(185.0),
        threshold: Some(0.08),
        trip_count: 0,
        manual_hold: false,
        qber_source: "etsi015".into(),
        keys: None,
    }
}

fn status() -> DaemonStatus {
    DaemonStatus {
        version: "0.1.0".into(),
        uptime_secs: 93_784,
        policy_serial: Some(42),
        links_open: 1,
        links_locked: 1,
        verbose: false,
    }
}

fn policy() -> PolicyInfo {
    let mut links = BTreeMap::new();
    links.insert(
        "dr".to_string(),
        LinkPolicy {
            qber_lockdown: 0.06,
            ..LinkPolicy::default()
        },
    );
    links.insert("hq".to_string(), LinkPolicy::default());
    PolicyInfo {
        serial: 42,
        not_after: Some(1_801_353_600),
        expired: false,
        signer: "qkdpfd-policy.pub".into(),
        links,
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON: {e}: {s}"))
}

#[test]
fn every_command_sends_its_exact_request() {
    let cases: &[(&[&str], &str)] = &[
        (&["reload"], r#""reload""#),
        (&["lockdown", "all"], r#"{"lockdown":{"target":"all"}}"#),
        (
            &["lockdown", "dr"],
            r#"{"lockdown":{"target":{"link":"dr"}}}"#,
        ),
        (
            &["unlock", "dr"],
            r#"{"unlock":{"target":{"link":"dr"},"force":false}}"#,
        ),
        (
            &["unlock", "-f", "all"],
            r#"{"unlock":{"target":"all","force":true}}"#,
        ),
        (&["log", "verbose"], r#"{"log":{"verbose":true}}"#),
        (&["log", "brief"], r#"{"log":{"verbose":false}}"#),
        (
            &["sim", "eve", "dr", "0.5"],
            r#"{"sim-eve":{"link":"dr","fraction":0.5}}"#,
        ),
        (
            &["sim", "noise", "dr", "0.02"],
            r#"{"sim-noise":{"link":"dr","qber":0.02}}"#,
        ),
    ];
    for (args, want) in cases {
        let r = run(args, &[ok("done")]);
        assert_eq!(
            r.request.as_deref(),
            Some(format!("{want}\n").as_str()),
            "{args:?}"
        );
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (0, "done\n", ""),
            "{args:?}"
        );
    }
    let data: &[(&[&str], &str, Reply)] = &[
        (&["status"], r#""status""#, Reply::Status(status())),
        (&["show", "links"], r#""show-links""#, Reply::Links(vec![])),
        (
            &["show", "link", "dr"],
            r#"{"show-link":{"link":"dr"}}"#,
            Reply::Links(vec![link_dr()]),
        ),
        (&["show", "policy"], r#""show-policy""#, Reply::Policy(None)),
    ];
    for (args, want, reply) in data {
        let r = run(args, std::slice::from_ref(reply));
        assert_eq!(
            r.request.as_deref(),
            Some(format!("{want}\n").as_str()),
            "{args:?}"
        );
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    }
}

#[test]
fn ok_message_as_json() {
    let r = run(&["-j", "reload"], &[ok("reloaded")]);
    assert_eq!(r.code, 0);
    assert_eq!(json(&r.stdout), serde_json::json!({"message": "reloaded"}));
}

#[test]
fn status_human_and_json() {
    let r = run(&["status"], &[Reply::Status(status())]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "version:       0.1.0\n\
         uptime:        1d02h03m\n\
         policy serial: 42\n\
         links open:    1\n\
         links locked:  1\n\
         log:           brief\n"
    );
    let r = run(&["-j", "status"], &[Reply::Status(status())]);
    assert_eq!(r.code, 0);
    assert_eq!(json(&r.stdout), serde_json::to_value(status()).unwrap());
    assert!(
        r.stdout.contains("\n  \"uptime_secs\": 93784,\n"),
        "pretty: {}",
        r.stdout
    );
}

#[test]
fn show_links_human_and_json() {
    let links = vec![link_dr(), link_hq()];
    let r = run(&["show", "links"], &[Reply::Links(links.clone())]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "NAME          STATE     REASONS        BAND      QBER    AGE\n\
         dr            lockdown  qber,operator  critical  0.0912  1.2s\n\
         headquarters  open      -              nominal   0.0210  3m05s\n"
    );
    let r = run(&["-j", "show", "links"], &[Reply::Links(links.clone())]);
    assert_eq!(json(&r.stdout), serde_json::to_value(&links).unwrap());
    assert_eq!(
        json(&r.stdout)[0]["reasons"],
        serde_json::json!(["qber", "operator"])
    );
}

#[test]
fn show_link_human_and_json() {
    let r = run(&["show", "link", "dr"], &[Reply::Links(vec![link_dr()])]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "link:            dr\n\
         state:           lockdown\n\
         reasons:         qber,operator\n\
         band:            critical\n\
         qber:            0.0912\n\
         sample age:      1.2s\n\
         threshold:       0.0800\n\
         trips:           3\n\
         manual hold:     yes\n\
         qber source:     sim\n\
         key role:        master\n\
         epoch:           12\n\
         installed epoch: 11\n\
         key id:          bc490419-7d60-487f-adc1-4ddcc177c139\n\
         psk fingerprint: a1b2c3d4\n\
         key age:         42s\n\
         rotations:       ok 11 failed 2\n\
         in round:        yes\n\
         rotation held:   no\n\
         kme stored keys: 950\n"
    );
    let r = run(
        &["-j", "show", "link", "dr"],
        &[Reply::Links(vec![link_dr()])],
    );
    assert_eq!(json(&r.stdout), serde_json::to_value(link_dr()).unwrap());
    assert_eq!(
        json(&r.stdout)["keys"]["installed_key_id"],
        "bc490419-7d60-487f-adc1-4ddcc177c139"
    );
    // An older daemon's reply has no key ID: still read.
    let mut k = serde_json::to_value(link_dr().keys.unwrap()).unwrap();
    k.as_object_mut().unwrap().remove("installed_key_id");
    let k: KeyInfo = serde_json::from_value(k).unwrap();
    assert_eq!(k.installed_key_id, None);
    // A reply for another link is the daemon's bug, never shown as this one.
    let r = run(&["show", "link", "dr"], &[Reply::Links(vec![link_hq()])]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("qkdctl: bad reply from daemon"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}

#[test]
fn show_policy_human_and_json() {
    let r = run(&["show", "policy"], &[Reply::Policy(Some(policy()))]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "serial:    42\n\
         not after: 2027-01-31T00:00:00Z\n\
         expired:   no\n\
         signer:    qkdpfd-policy.pub\n\
         \n\
         LINK  ON-QBER   LOCKDOWN  TRIPS  RECOVER  AFTER  UNLOCK  BANDS\n\
         dr    lockdown  0.06      3      0.05     1m     auto    0.03/0.05/0.08/0.11\n\
         hq    lockdown  0.08      3      0.05     1m     auto    0.03/0.05/0.08/0.11\n\
         \n\
         LINK  ROTATE  MAX-KEY-AGE  QBER-TIMEOUT  PEER-TIMEOUT\n\
         dr    5m      15m          10s           15m\n\
         hq    5m      15m          10s           15m\n"
    );
    let r = run(&["-j", "show", "policy"], &[Reply::Policy(Some(policy()))]);
    assert_eq!(json(&r.stdout), serde_json::to_value(policy()).unwrap());
    let r = run(&["show", "policy"], &[Reply::Policy(None)]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "no active policy\n"));
    let r = run(&["-j", "show", "policy"], &[Reply::Policy(None)]);
    assert_eq!(json(&r.stdout), serde_json::Value::Null);
}

#[test]
fn error_reply_exits_1_on_stderr() {
    for json_flag in [false, true] {
        let mut args = vec!["unlock", "dr"];
        if json_flag {
            args.insert(0, "-j");
        }
        let r = run(
            &args,
            &[Reply::error(ErrorCode::Denied, "permission denied")],
        );
        assert_eq!(r.code, 1);
        assert_eq!(r.stderr, "qkdctl: permission denied\n");
        assert_eq!(r.stdout, "");
    }
    let r = run(
        &["show", "link", "xx"],
        &[Reply::error(ErrorCode::NoSuchLink, "no such link: xx")],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "qkdctl: no such link: xx\n")
    );
}

#[test]
fn wrong_or_missing_reply_exits_1() {
    let r = run(&["status"], &[ok("hello")]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "qkdctl: unexpected reply from daemon to status\n");
    let r = run(&["lockdown", "all"], &[Reply::Status(status())]);
    assert_eq!(r.code, 1);
    let r = run(&["reload"], &[]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "qkdctl: daemon closed the connection without a reply\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let r = run_at(
        &dir.path().join("s"),
        &["reload"],
        vec!["{\"reboot\":1}".into()],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("qkdctl: bad reply from daemon:"),
        "{}",
        r.stderr
    );
}

#[test]
fn usage_errors_exit_2_without_connecting() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "missing command"),
        (&["show"], "missing argument after \"show\""),
        (&["frob"], "unknown command \"frob\""),
        (&["rotate"], "missing argument after \"rotate\""),
        (
            &["show", "lnks"],
            "unknown argument \"lnks\" after \"show\"",
        ),
        (&["status", "now"], "unexpected argument \"now\""),
        (
            &["sim", "eve", "dr", "2"],
            "expected FRACTION, a number from 0 to 1",
        ),
        (
            &["sim", "noise", "dr", "0.6"],
            "expected QBER, a number from 0 to 0.5",
        ),
        (&["sim", "eve", "dr"], "FRACTION (0..1)"),
        (&["unlock"], "LINK|all"),
        (&["-x", "status"], "unknown option \"-x\""),
    ];
    for (args, want) in cases {
        let r = run(args, &[ok("x")]);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("usage: qkdctl"), "{args:?}: {}", r.stderr);
        assert_eq!(r.request, None, "{args:?}");
        assert_eq!(r.stdout, "");
    }
    let r = run(&["show"], &[]);
    assert!(
        r.stderr
            .contains("valid commands/args:\n  links\n  link\n  policy\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn connect_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sock");
    let out = Command::new(BIN)
        .args(["-s", missing.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let r = finish(out, None);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!(
            "qkdctl: connect {}: No such file or directory\n",
            missing.display()
        )
    );
    // A socket file with nobody listening: the daemon is down.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let out = Command::new(BIN)
        .args(["-s", stale.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let r = finish(out, None);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!("qkdctl: connect {}: Connection refused\n", stale.display())
    );
}

fn bundle_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("anchors")).unwrap();
    std::fs::write(d.path().join("policy.toml"), "serial = 43\n").unwrap();
    std::fs::write(d.path().join("anchors/open.pf"), "pass quick\n").unwrap();
    std::fs::write(d.path().join("anchors/lockdown.pf"), "block quick\n").unwrap();
    std::fs::write(d.path().join("SHA256.sig"), "sig\n").unwrap();
    d
}

#[test]
fn policy_load_directory_sends_tar() {
    let d = bundle_dir();
    let r = run(
        &["policy", "load", d.path().to_str().unwrap()],
        &[ok("policy loaded serial=43")],
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "policy loaded serial=43\n"),
        "{}",
        r.stderr
    );
    let req: Request = serde_json::from_str(r.request.as_deref().unwrap()).unwrap();
    let Request::PolicyLoad { bundle_b64 } = req else {
        panic!("not policy-load: {req:?}")
    };
    let tar = base64::engine::general_purpose::STANDARD
        .decode(bundle_b64)
        .unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut got = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
        let name = e.path().unwrap().to_str().unwrap().to_string();
        let mut body = String::new();
        e.read_to_string(&mut body).unwrap();
        got.push((name, body));
    }
    let want: Vec<(String, String)> = [
        ("SHA256.sig", "sig\n"),
        ("anchors/lockdown.pf", "block quick\n"),
        ("anchors/open.pf", "pass quick\n"),
        ("policy.toml", "serial = 43\n"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn policy_load_refuses_symlink_and_sends_nothing() {
    let d = bundle_dir();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("anchors/extra.pf")).unwrap();
    let r = run(&["policy", "load", d.path().to_str().unwrap()], &[ok("x")]);
    assert_eq!(r.code, 1);
    assert_eq!(r.request, None);
    let link: PathBuf = d.path().join("anchors/extra.pf");
    assert_eq!(
        r.stderr,
        format!(
            "qkdctl: {}: is a symbolic link; bundles hold regular files only\n",
            link.display()
        )
    );
}

#[test]
fn policy_load_archive_sent_as_bytes() {
    let d = tempfile::tempdir().unwrap();
    let tgz = d.path().join("bundle.tgz");
    std::fs::write(&tgz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let r = run(&["policy", "load", tgz.to_str().unwrap()], &[ok("ok")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.request.as_deref(),
        Some("{\"policy-load\":{\"bundle_b64\":\"H4sIAAAA\"}}\n")
    );
}

#[test]
fn policy_verify_runs_hook_without_daemon() {
    // A missing key is refused locally; the daemon is never contacted.
    let r = run(
        &["policy", "verify", "-p", "/nonexistent/k.pub", "bundle"],
        &[ok("x")],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("qkdctl: policy verify: "),
        "{}",
        r.stderr
    );
    assert_eq!(r.request, None);
}

#[test]
fn monitor_prints_streamed_events() {
    let events = [
        Reply::Event("event=band link=dr from=nominal to=critical qber=0.09".into()),
        Reply::Event(r#"event=lockdown link=dr reason=qber msg="a \"b\"""#.into()),
    ];
    let r = run(&["monitor"], &events);
    assert_eq!(r.request.as_deref(), Some("\"monitor\"\n"));
    assert_eq!(
        r.stdout,
        "event=band link=dr from=nominal to=critical qber=0.09\n\
         event=lockdown link=dr reason=qber msg=\"a \\\"b\\\"\"\n"
    );
    // The stream ends only when the daemon goes away: that is a failure.
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "qkdctl: daemon closed the connection\n")
    );

    let r = run(&["-j", "monitor"], &events);
    let lines: Vec<serde_json::Value> = r.stdout.lines().map(json).collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"event": "band", "link": "dr", "from": "nominal",
                "to": "critical", "qber": "0.09"}),
            serde_json::json!({"event": "lockdown", "link": "dr", "reason": "qber",
                "msg": "a \"b\""}),
        ]
    );

    let r = run(&["monitor"], &[Reply::error(ErrorCode::Denied, "denied")]);
    assert_eq!((r.code, r.stderr.as_str()), (1, "qkdctl: denied\n"));
}

/// A daemon that answers (a denial) and closes before reading the request:
/// qkdctl's write fails with EPIPE, and it still prints the denial.
#[test]
fn a_reply_sent_before_the_request_was_read_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qkdpfd.sock");
    let bundle = dir.path().join("big");
    std::fs::create_dir(&bundle).unwrap();
    // Far more than a socket buffer: the write blocks until the close.
    std::fs::write(bundle.join("policy.toml"), "#".repeat(4 << 20)).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    let denial =
        serde_json::to_string(&Reply::error(ErrorCode::Denied, "denied: root only")).unwrap();
    let server = thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.write_all(format!("{denial}\n").as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(200));
        // Dropped unread.
    });
    let out = Command::new(BIN)
        .args(["-s", sock.to_str().unwrap(), "policy", "load"])
        .arg(&bundle)
        .output()
        .unwrap();
    server.join().unwrap();
    let r = finish(out, None);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "qkdctl: denied: root only\n")
    );
}
