//! The parent trusts no engine (DESIGN §2; fail-closed issue item 3): a
//! fake engine (`[testing] engine`, a small Python program speaking the
//! fd-3 framing) sends what a compromised engine would — parent-owned
//! reasons, a forged root `unlock -f`, a frame too large to exist, a
//! flood — and the parent must keep every link it holds locked, never
//! panic, and stay bounded in memory. Real nftables in a namespace; the
//! kernel is read back after each.
#![cfg(target_os = "linux")]

mod common;

use common::gateway::Gateway;
use std::process::Command;
use std::time::{Duration, Instant};

/// The fake engine. Its mode is in the file `mode` beside it (the parent
/// starts the engine with an empty environment).
const FAKE: &str = r#"
import os, sys, json, struct, time
FD = 3
here = os.path.dirname(os.path.abspath(__file__))
mode = open(os.path.join(here, "mode")).read().strip()

def read_exact(n):
    b = b""
    while len(b) < n:
        c = os.read(FD, n - len(b))
        if not c:
            sys.exit(0)
        b += c
    return b

def read_frame():
    n, v, z, t = struct.unpack(">IBBH", read_exact(8))
    return t, read_exact(n)

def send(t, obj):
    p = json.dumps(obj).encode()
    os.write(FD, struct.pack(">IBBH", len(p), 1, 0, t) + p)

def garbage():
    os.write(FD, struct.pack(">IBBH", 0xFFFFFFFF, 1, 0, 101))

def reasons(link, rs):
    send(101, {"link": link, "reasons": rs, "qber": None, "threshold": None,
               "by_operator": False, "sampled_ns": None})

read_frame()                                   # the config
send(100, {"version": 1, "pid": os.getpid()})  # hello
if mode == "claim":
    # Clears its own reasons and claims a parent-owned one.
    reasons("dr", [])
    reasons("dr", ["operator"])
elif mode == "forge-unlock":
    reasons("dr", [])
    # `unlock -f all` said to come from root, with no client behind it.
    send(103, {"id": 1, "uid": 0, "request": {"unlock": {"target": "all", "force": True}}})
    time.sleep(1.5)
    garbage()
elif mode == "oversized":
    reasons("dr", [])
    garbage()
elif mode == "flood":
    reasons("dr", [])
    line = "event=x " + "a" * 4000
    for i in range(20000):
        send(102, {"prio": 7, "line": line})
    time.sleep(1)
    garbage()
time.sleep(30)
"#;

fn python() -> Option<String> {
    let o = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!p.is_empty()).then_some(p)
}

/// A gateway whose qkdpfd runs the fake engine in `mode`.
fn gateway(prefix: &str, mode: &str) -> Option<Gateway> {
    let gw = Gateway::new(prefix, "200ms", "")?;
    let Some(py) = python() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: python3 needed"
        );
        eprintln!("!!!!! SKIPPED: no python3 for the fake engine !!!!!");
        return None;
    };
    let dir = gw.path("fake");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("engine.py"), FAKE).unwrap();
    std::fs::write(dir.join("mode"), mode).unwrap();
    let wrapper = dir.join("engine");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {py} {}\n", dir.join("engine.py").display()),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&wrapper, perm).unwrap();
    let conf = gw.path("qkdpfd.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "\n[testing]\nengine = \"{}\"\n",
        wrapper.display()
    ));
    std::fs::write(&conf, text).unwrap();
    Some(gw)
}

/// Runs qkdpfd -d to its end (the fake engine ends it); its exit code,
/// its log, and the highest VmHWM seen meanwhile (KiB).
fn run(gw: &Gateway) -> (Option<i32>, String, u64) {
    let log = gw.path("qkdpfd.log");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &gw.ns_a(),
            common::gateway::BIN_QKDPFD,
            "-d",
            "-f",
        ])
        .arg(gw.path("qkdpfd.conf"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t = Instant::now();
    let mut hwm = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        hwm = hwm.max(hwm_kib(pid).unwrap_or(0));
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the parent never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&log).unwrap(), hwm)
}

/// VmHWM of `pid` in KiB; None once it is gone (or a zombie).
fn hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The link's own chain, read from the kernel: qkdpfd's drop, or a goto
/// into the lockdown chain.
fn kernel_locked(gw: &Gateway) -> bool {
    let chain = gw.nft(&["list", "chain", "inet", "qkdpfd", "link_dr"]);
    chain.contains("drop comment \"qkdpfd drop\"") || chain.contains("goto lock_dr")
}

#[test]
fn an_engine_claiming_a_parent_reason_is_a_failed_engine() {
    let Some(gw) = gateway("qkh1", "claim") else {
        return;
    };
    let (code, log, _) = run(&gw);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("engine claimed parent-owned reasons"), "{log}");
    assert!(
        log.contains("event=lockdown proc=parent link=dr reason=process-failure"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(kernel_locked(&gw));
    assert_eq!(gw.pings(3), 0);
}

#[test]
fn a_forged_root_unlock_is_refused_by_the_kernels_word() {
    let Some(gw) = gateway("qkh2", "forge-unlock") else {
        return;
    };
    // An operator lockdown from before, in the state file.
    let state = gw.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("state"),
        "{\"version\": 1, \"active\": null, \"links\": {\"dr\": {\"reasons\": [\"operator\"]}}}",
    )
    .unwrap();
    let (code, log, _) = run(&gw);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("event=ctl_denied proc=parent uid=unknown command=unlock"),
        "{log}"
    );
    assert!(!log.contains("unlock_forced"), "{log}");
    let st = std::fs::read_to_string(state.join("state")).unwrap();
    assert!(st.contains("operator"), "{st}");
    assert!(kernel_locked(&gw));
}

#[test]
fn a_frame_too_large_to_exist_ends_the_engine_not_the_parent() {
    let Some(gw) = gateway("qkh3", "oversized") else {
        return;
    };
    let (code, log, _) = run(&gw);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("event=engine_lost"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(kernel_locked(&gw));
}

#[test]
fn a_flooding_engine_keeps_the_parent_bounded() {
    let Some(gw) = gateway("qkh4", "flood") else {
        return;
    };
    // 20,000 log records of 4 KB (80 MB) as fast as the engine can write.
    let (code, log, hwm) = run(&gw);
    eprintln!(
        "parent VmHWM during the flood: {:.1} MiB",
        hwm as f64 / 1024.0
    );
    assert_eq!(code, Some(1), "{}", &log[log.len().saturating_sub(2000)..]);
    assert!(!log.contains("panicked"));
    assert!(hwm < 64 * 1024, "parent peak {hwm} KiB");
    assert!(kernel_locked(&gw));
}
