//! A flood from outside for the peer-port tests (issue 8 item 4): a
//! namespace of its own joined to a gateway by a veth, a raw socket that
//! writes its own IP headers (so any source address, spoofed), sendmmsg
//! in batches at a set rate; and a packet-socket sniffer that captures
//! peer-protocol datagrams on an interface, to replay them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we own.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Peer-protocol datagrams (UDP payloads to or from `port` that start
/// with the magic `QKDP`) seen on an interface, both directions, with a
/// packet socket; each kept once.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Sniffer {
    pub fn start(ns: &str, ifname: &str, port: u16) -> Sniffer {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, ifname) = (stop.clone(), ifname.to_string());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = in_netns(ns, move || {
            let all = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: a new socket, owned at once.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, all as i32) };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(ifname).unwrap();
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(index > 0, "no interface");
            // SAFETY: zeroed is a valid sockaddr_ll; fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all;
            sll.sll_ifindex = index as i32;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: sll is a sockaddr_ll of `len` bytes.
            let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), len) };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: a timeval option of its own size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            ready_tx.send(()).unwrap();
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: buf is writable for its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                if let Some(d) = peer_payload(&buf[..n as usize], port) {
                    if !seen.contains(&d) {
                        seen.push(d);
                    }
                }
            }
            seen
        });
        ready.recv().unwrap();
        Sniffer { stop, thread }
    }

    pub fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The UDP payload of an IPv4 packet to or from `port`, if it is a
/// peer-protocol datagram.
fn peer_payload(ip: &[u8], port: u16) -> Option<Vec<u8>> {
    let header = ip.first().map_or(0, |b| (b & 0xf) as usize * 4);
    if header < 20 || ip.len() < header + 8 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let udp = &ip[header..];
    let field = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    let len = field(4) as usize;
    if (field(0) != port && field(2) != port) || len < 8 + 6 || len > udp.len() {
        return None;
    }
    let payload = &udp[8..len];
    payload.starts_with(b"QKDP").then(|| payload.to_vec())
}

/// One datagram of a flood: its IPv4 source (any: spoofed) and UDP payload.
pub struct Shot {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub payload: Vec<u8>,
}

/// A namespace `{prefix}-f` joined to gateway namespace `gw` by a veth of
/// its own (198.51.100.2 there, 198.51.100.1 in the gateway), so spoofed
/// sources arrive from outside as they would from the Internet; it floods
/// `dst`. Deleted when dropped (and its veth with it).
pub struct Flooder {
    pub ns: String,
    dst: SocketAddrV4,
}

impl Flooder {
    pub fn new(prefix: &str, gw: &str, dst: SocketAddrV4) -> Flooder {
        let ns = format!("{prefix}-f");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let f = Flooder {
            ns: ns.clone(),
            dst,
        };
        let (vf, vx) = (format!("{prefix}-vf"), format!("{prefix}-vx"));
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &vf, "netns", &ns, "type", "veth", "peer", "name", &vx, "netns", gw,
        ]);
        ip(&["-n", &ns, "addr", "add", "198.51.100.2/24", "dev", &vf]);
        ip(&["-n", gw, "addr", "add", "198.51.100.1/24", "dev", &vx]);
        ip(&["-n", &ns, "link", "set", &vf, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", gw, "link", "set", &vx, "up"]);
        let to = format!("{}/32", dst.ip());
        ip(&["-n", &ns, "route", "add", &to, "via", "198.51.100.1"]);
        // Spoofed sources arrive on an interface that is not their route
        // back: reverse-path filtering would drop them in the gateway.
        for key in ["all", "default", vx.as_str()] {
            let sysctl = format!("net.ipv4.conf.{key}.rp_filter=0");
            ip(&["netns", "exec", gw, "sysctl", "-qw", &sysctl]);
        }
        f
    }

    /// Sends `pool` round and round to `dst` at up to `rate` a second for
    /// `time`; the thread's answer is how many the kernel took, in how long.
    pub fn flood(
        &self,
        pool: Vec<Shot>,
        rate: u64,
        time: Duration,
    ) -> std::thread::JoinHandle<(u64, Duration)> {
        let to = self.dst;
        in_netns(&self.ns, move || {
            // IPPROTO_RAW: we write the IP header ourselves (IP_HDRINCL),
            // source address included.
            // SAFETY: a new socket, owned at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let packets: Vec<Vec<u8>> = pool.iter().map(|s| ip_udp(s, to)).collect();
            // SAFETY: zeroed is a valid sockaddr_in; fields set below.
            let mut dst: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            dst.sin_family = libc::AF_INET as u16;
            dst.sin_addr.s_addr = u32::from(*to.ip()).to_be();
            const BATCH: usize = 64;
            let mut iov: Vec<libc::iovec> = packets
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                })
                .collect();
            let mut sent = 0u64;
            let mut next = 0usize;
            let t0 = Instant::now();
            while t0.elapsed() < time {
                let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                if sent >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let n = ((due - sent) as usize).min(BATCH).min(packets.len() - next);
                // SAFETY: zeroed is a valid mmsghdr; each points at one
                // iovec of `iov` and at `dst`, all alive for the call.
                let mut msgs: Vec<libc::mmsghdr> = (0..n)
                    .map(|k| {
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_name = (&raw mut dst).cast();
                        m.msg_hdr.msg_namelen =
                            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                        m.msg_hdr.msg_iov = &raw mut iov[next + k];
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                // SAFETY: msgs holds n valid headers.
                let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
                if r > 0 {
                    sent += r as u64;
                    next = (next + r as usize) % packets.len();
                } else {
                    // ENOBUFS: the veth queue is full; let it drain.
                    std::thread::yield_now();
                }
            }
            (sent, t0.elapsed())
        })
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// An IPv4 + UDP packet (UDP checksum 0: none, allowed over IPv4; the
/// kernel fills in the IP checksum).
fn ip_udp(s: &Shot, to: SocketAddrV4) -> Vec<u8> {
    let total = 20 + 8 + s.payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&s.src.octets());
    p.extend_from_slice(&to.ip().octets());
    p.extend_from_slice(&s.sport.to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&((8 + s.payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&s.payload);
    p
}
