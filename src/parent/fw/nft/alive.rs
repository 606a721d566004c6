//! The nftables dead-man switch (DESIGN §2, §5). Every base-chain jump to a
//! link chain also needs `meta nfproto @alive`: set `alive` (type nf_proto,
//! flags timeout) holds `ipv4` and `ipv6` with a timeout of a few seconds,
//! and the parent refreshes them every second. When the parent dies, or its
//! loop stalls, the elements expire, no jump matches and every protected
//! packet meets the drop that follows the jump: every link locks within the
//! timeout with no supervisor. A stop that keeps the kernel state disarms it
//! (elements without a timeout).
//!
//! The refresh is one netlink batch (flush the set, add both elements; a
//! plain add of an existing element does not reset its expiry on Debian's
//! 6.1 kernel) built here by hand and sent from the parent's own loop:
//! never a forked `nft`, so it costs no process and runs only while the
//! loop does. The builders are pure and tested with golden bytes on every
//! platform; only the socket is Linux-only.

use std::time::Duration;

use crate::parent::wg::linux::{Msg, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, c_name};
use crate::ruleset::nft::ALIVE_SET;

pub const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_CREATE: u16 = 0x400;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// A netfilter netlink message: the shared builder with nfgenmsg as its
/// family header (family, version NFNETLINK_V0, res_id big endian).
fn msg(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
    let r = res_id.to_be_bytes();
    Msg::with_header(ty, flags, seq, 0, [family, 0, r[0], r[1]])
}

/// The refresh batch: begin, flush `<table> alive` (DELSETELEM without
/// elements), add `ipv4` and `ipv6` with `timeout` (None: no timeout, the
/// switch disarmed), end. The two nf_tables messages ask for an ACK and
/// carry sequence numbers `seq + 1` and `seq + 2`.
pub fn refresh_batch(table: &str, seq: u32, timeout: Option<Duration>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        &msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    let ty = |cmd: u16| (NFNL_SUBSYS_NFTABLES << 8) | cmd;
    let mut flush = msg(
        ty(NFT_MSG_DELSETELEM),
        NLM_F_REQUEST | NLM_F_ACK,
        seq + 1,
        NFPROTO_INET,
        0,
    );
    flush.attr(NFTA_SET_ELEM_LIST_TABLE, &c_name(table));
    flush.attr(NFTA_SET_ELEM_LIST_SET, &c_name(ALIVE_SET));
    out.extend_from_slice(&flush.finish());
    let mut add = msg(
        ty(NFT_MSG_NEWSETELEM),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        seq + 2,
        NFPROTO_INET,
        0,
    );
    add.attr(NFTA_SET_ELEM_LIST_TABLE, &c_name(table));
    add.attr(NFTA_SET_ELEM_LIST_SET, &c_name(ALIVE_SET));
    add.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for proto in [NFPROTO_IPV4, NFPROTO_IPV6] {
        add.nest(NFTA_LIST_ELEM);
        add.nest(NFTA_SET_ELEM_KEY)
            .attr(NFTA_DATA_VALUE, &[proto])
            .end();
        if let Some(t) = timeout {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            add.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        add.end();
    }
    add.end();
    out.extend_from_slice(&add.finish());
    out.extend_from_slice(
        &msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq + 3,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    out
}

/// Reads the kernel's answers to a refresh until both ACKs arrived; the
/// first error's errno otherwise. `recv` returns one datagram.
pub fn await_acks(
    seq: u32,
    mut recv: impl FnMut(&mut [u8]) -> Result<usize, String>,
) -> Result<(), String> {
    let mut pending = vec![seq + 1, seq + 2];
    let mut buf = vec![0u8; 8192];
    while !pending.is_empty() {
        let n = recv(&mut buf)?;
        let msgs = crate::parent::wg::linux::messages(&buf[..n]).map_err(|e| e.to_string())?;
        for m in msgs {
            if m.ty != NLMSG_ERROR || !pending.contains(&m.seq) {
                continue;
            }
            let errno = crate::parent::wg::linux::errno_of(m.payload).map_err(|e| e.to_string())?;
            if errno != 0 {
                return Err(format!(
                    "set {ALIVE_SET}: {}",
                    std::io::Error::from_raw_os_error(-errno)
                ));
            }
            pending.retain(|s| *s != m.seq);
        }
    }
    Ok(())
}

const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_ID: u16 = 1;

/// NFT_MSG_GETGEN: asks for the ruleset's generation number, which every
/// committed nf_tables transaction increments by one.
pub fn getgen_request(seq: u32) -> Vec<u8> {
    msg(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
        NLM_F_REQUEST,
        seq,
        0,
        0,
    )
    .finish()
    .to_vec()
}

/// The generation number in a NFT_MSG_NEWGEN answer to request `seq`.
pub fn parse_gen(buf: &[u8], seq: u32) -> Result<Option<u32>, String> {
    use crate::parent::wg::linux::{attrs, errno_of, messages};
    for m in messages(buf).map_err(|e| e.to_string())? {
        if m.seq != seq {
            continue;
        }
        if m.ty == NLMSG_ERROR {
            let errno = errno_of(m.payload).map_err(|e| e.to_string())?;
            return Err(format!(
                "generation: {}",
                std::io::Error::from_raw_os_error(-errno)
            ));
        }
        if m.ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
            continue;
        }
        let body = m.payload.get(4..).ok_or("generation: short answer")?;
        for (t, d) in attrs(body).map_err(|e| e.to_string())? {
            if t == NFTA_GEN_ID && d.len() == 4 {
                return Ok(Some(u32::from_be_bytes([d[0], d[1], d[2], d[3]])));
            }
        }
        return Err("generation: answer without an id".into());
    }
    Ok(None)
}

/// The current generation (Linux; an error elsewhere).
pub fn generation(seq: u32) -> Result<u32, String> {
    use crate::parent::wg::linux::sys::Nl;
    let nl = Nl::open_protocol(NETLINK_NETFILTER).map_err(|e| e.to_string())?;
    nl.send(&getgen_request(seq)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = nl.recv(&mut buf).map_err(|e| e.to_string())?;
        if let Some(g) = parse_gen(&buf[..n], seq)? {
            return Ok(g);
        }
    }
}

/// Sends one refresh and waits for its ACKs (Linux; an error elsewhere).
pub fn refresh(table: &str, seq: u32, timeout: Option<Duration>) -> Result<(), String> {
    use crate::parent::wg::linux::sys::Nl;
    let nl = Nl::open_protocol(NETLINK_NETFILTER).map_err(|e| e.to_string())?;
    nl.send(&refresh_batch(table, seq, timeout))
        .map_err(|e| e.to_string())?;
    await_acks(seq, |b| nl.recv(b).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn refresh_batch_golden_bytes() {
        let b = refresh_batch("qkdpfd", 100, Some(Duration::from_secs(3)));
        let le = cfg!(target_endian = "little");
        if !le {
            return; // golden bytes written for little-endian hosts
        }
        // Batch begin: len 20, type 0x10, NLM_F_REQUEST, seq 100, AF_UNSPEC, res_id 10 (be).
        assert_eq!(hex(&b[..20]), "140000001000010064000000000000000000000a");
        // Flush: type 0x0a0e, flags REQUEST|ACK, seq 101, NFPROTO_INET, table and set names.
        assert_eq!(hex(&b[20..24]), "2c000000");
        assert_eq!(hex(&b[24..28]), "0e0a0500");
        assert_eq!(hex(&b[28..32]), "65000000");
        assert_eq!(hex(&b[36..40]), "01000000");
        assert_eq!(hex(&b[40..52]), "0b000100716b647066640000");
        assert_eq!(hex(&b[52..64]), "0a000200616c697665000000");
        // Add: type 0x0a0c, REQUEST|ACK|CREATE, seq 102; two elements with a
        // 1-byte key (2 = ipv4, 10 = ipv6) and a 3000 ms be64 timeout.
        let add = &b[64..];
        assert_eq!(hex(&add[4..8]), "0c0a0504");
        assert_eq!(hex(&add[8..12]), "66000000");
        let h = hex(add);
        assert!(h.contains("0c0001800500010002000000"), "{h}");
        assert!(h.contains("050001000a000000"), "{h}");
        assert_eq!(h.matches("0c0004000000000000000bb8").count(), 2, "{h}");
        // Batch end, seq 103.
        assert_eq!(hex(&b[b.len() - 20..b.len() - 12]), "1400000011000100");
        assert_eq!(hex(&b[b.len() - 12..b.len() - 8]), "67000000");
    }

    #[test]
    fn generation_request_and_answer() {
        let r = getgen_request(9);
        if cfg!(target_endian = "little") {
            assert_eq!(hex(&r), "14000000100a0100090000000000000000000000");
        }
        // A NFT_MSG_NEWGEN answer: nfgenmsg, then NFTA_GEN_ID = 0x01020304 (be).
        let mut m = Vec::new();
        m.extend_from_slice(&28u32.to_ne_bytes());
        m.extend_from_slice(&((10u16 << 8) | 15).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&9u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(parse_gen(&m, 9).unwrap(), Some(0x0102_0304));
        assert_eq!(parse_gen(&m, 8).unwrap(), None, "another request's answer");
    }

    #[test]
    fn disarmed_has_no_timeout() {
        let b = refresh_batch("qkdpfd", 1, None);
        assert!(!hex(&b).contains("0c000400"));
    }

    #[test]
    fn acks_and_errors() {
        let ack = |seq: u32, errno: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&errno.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]);
            m
        };
        let mut q = vec![ack(11, 0), ack(12, 0)];
        let feed = |q: &mut Vec<Vec<u8>>, b: &mut [u8]| {
            let m = q.remove(0);
            b[..m.len()].copy_from_slice(&m);
            Ok(m.len())
        };
        assert!(await_acks(10, |b| feed(&mut q, b)).is_ok());
        let mut q = vec![ack(11, 0), ack(12, -libc::ENOENT)];
        let e = await_acks(10, |b| feed(&mut q, b)).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
