//! nftables set-up for the benches (included by path).

use std::io::Write;
use std::process::{Child, Command, Stdio};

use qkdpfd::conf::{FirewallBackend, FirewallConf};

/// The nftables backend's configuration, table `qkdpfd`, `nft` from PATH.
pub fn nft_conf() -> FirewallConf {
    FirewallConf {
        backend: FirewallBackend::Nftables,
        anchor: "qkdpfd".into(),
        pfctl: "/sbin/pfctl".into(),
        nft: "nft".into(),
        handshakes: false,
    }
}

/// Moves this thread into network namespace `name` (`ip netns add`), so
/// the backend's netlink and the processes it starts reach its nftables.
pub fn enter_netns(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let file = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we own.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// Starts `nft -f -` with `script` on its standard input (closed once
/// written); the caller waits for it.
pub fn spawn_nft(script: &str) -> Child {
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    c
}
