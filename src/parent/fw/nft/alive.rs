//! The nftables dead-man switch (DESIGN §2, §5). Every base-chain jump to a
//! link chain also needs `meta nfproto @alive`: set `alive` (type nf_proto,
//! flags timeout) holds `ipv4` and `ipv6` with a timeout of a few seconds,
//! and the parent refreshes them every second. When the parent dies, or its
//! loop stalls, the elements expire, no jump matches and every protected
//! packet meets the drop that follows the jump: every link locks within the
//! timeout with no supervisor. A stop that keeps the kernel state leaves it
//! armed: the links stay as they are while a restart completes within the
//! timeout, and lock if none does.
//!
//! The refresh is one netlink batch (flush the set, add both elements; a
//! plain add of an existing element does not reset its expiry on Debian's
//! 6.1 kernel) built here by hand and sent from the parent's own loop:
//! never a forked `nft`, so it costs no process and runs only while the
//! loop does. The builders are pure and tested with golden bytes on every
//! platform; only the socket is Linux-only.

use std::time::Duration;

use super::netlink::{BOTH_FAMILIES, Change, NFNL_SUBSYS_NFTABLES, msg};
use crate::parent::wg::linux::{NLM_F_REQUEST, NLMSG_ERROR};
use crate::ruleset::nft::ALIVE_SET;

pub use super::netlink::NETLINK_NETFILTER;

/// The refresh: flush `<table> alive`, add `ipv4` and `ipv6` with
/// `timeout` (None: no timeout, the switch disarmed), in one transaction.
fn refresh_changes(timeout: Option<Duration>) -> [Change<'static>; 2] {
    [
        Change::Flush(ALIVE_SET),
        Change::Add(ALIVE_SET, &BOTH_FAMILIES, timeout),
    ]
}

/// The refresh batch: begin, the flush (seq + 1), the add (seq + 2), end.
pub fn refresh_batch(table: &str, seq: u32, timeout: Option<Duration>) -> Vec<u8> {
    super::netlink::batch(table, seq, &refresh_changes(timeout))
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
    super::netlink::request(&getgen_request(seq), |b| parse_gen(b, seq))
}

/// Sends one refresh and waits for its ACKs (Linux; an error elsewhere).
pub fn refresh(table: &str, seq: u32, timeout: Option<Duration>) -> Result<(), String> {
    let what = format!("set {ALIVE_SET}");
    super::netlink::transact(table, seq, &refresh_changes(timeout), &what)
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
}
