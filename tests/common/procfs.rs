//! Reading qkdpfd's processes from /proc (Linux), for the tests and the
//! benchmarks (which include this file by path).

use std::fs;

/// The engine: the one child of the parent `parent` that runs qkdpfd's own
/// binary (`ip netns exec` execs qkdpfd in place, so the pid of the spawned
/// `ip` is the parent's; a firewall tool the parent runs meanwhile is a
/// child too, for a moment). Panics unless there is exactly one, so a test
/// never reads the wrong process.
pub fn engine_pid(parent: u32) -> u32 {
    let exe = |pid: u32| fs::read_link(format!("/proc/{pid}/exe")).ok();
    let ours = exe(parent);
    let kids: Vec<u32> = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&k| ours.is_some() && exe(k) == ours)
        .collect();
    assert_eq!(kids.len(), 1, "parent {parent} engine children: {kids:?}");
    kids[0]
}

/// `Key:\tvalue` from /proc/<pid>/status, the value trimmed.
pub fn status_field(pid: u32, key: &str) -> String {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status:\n{s}"))
}

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), in KiB.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let v = status_field(pid, key);
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} of {pid}: {v:?}"))
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of proc(5); `rest` starts at 3.
    let ticks = f[11] + f[12];
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap();
    ticks as f64 / hz as f64
}
