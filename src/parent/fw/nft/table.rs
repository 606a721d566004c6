//! Whether our tables see packets at all. A table's `dormant` flag
//! (`nft add table inet qkdpfd '{ flags dormant; }'`) unhooks every base
//! chain it holds: its rules still list exactly as loaded, and every
//! packet passes. So a read-back that judges rules alone would read a
//! dormant table's links back as locked. nft 1.0.6 prints the flag in
//! its JSON as garbage, so it is read over netlink (NFT_MSG_GETTABLE), and
//! cleared the same way (NFT_MSG_NEWTABLE with no flags: an update that
//! wakes the table), whatever nft's `add table` does with flags.

use super::netlink::{self, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, msg};
use crate::parent::wg::linux::{NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, c_name};

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// NFT_TABLE_F_DORMANT.
pub const DORMANT: u32 = 1;

/// GETTABLE of `inet <table>`, one answer and an ACK.
pub fn flags_request(table: &str, seq: u32) -> Vec<u8> {
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
    let mut m = msg(ty, NLM_F_REQUEST | NLM_F_ACK, seq, NFPROTO_INET, 0);
    m.attr(NFTA_TABLE_NAME, &c_name(table));
    m.finish().to_vec()
}

/// Reads one datagram of the answer to [`flags_request`] sent with `seq`:
/// Some(Some(flags)) once the table's message and the ACK are in,
/// Some(None) on ENOENT (no such table), None while more is to come.
pub fn parse_flags(
    buf: &[u8],
    seq: u32,
    seen: &mut Option<u32>,
) -> Result<Option<Option<u32>>, String> {
    use crate::parent::wg::linux::{attrs, errno_of, messages};
    let bad = |e: crate::parent::wg::WgError| format!("table flags: {e}");
    for m in messages(buf).map_err(bad)? {
        if m.seq != seq {
            continue;
        }
        if m.ty == NLMSG_ERROR {
            return match -errno_of(m.payload).map_err(bad)? {
                0 => match *seen {
                    Some(f) => Ok(Some(Some(f))),
                    None => Err("table flags: an ACK without the table".into()),
                },
                libc::ENOENT => Ok(Some(None)),
                e => Err(format!(
                    "table flags: {}",
                    std::io::Error::from_raw_os_error(e)
                )),
            };
        }
        if m.ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
            // The body starts with the 4-byte nfgenmsg.
            let body = m.payload.get(4..).ok_or("table flags: a short answer")?;
            let flags = (attrs(body).map_err(bad)?.into_iter())
                .find(|(t, _)| *t == NFTA_TABLE_FLAGS)
                .and_then(|(_, d)| <[u8; 4]>::try_from(d).ok())
                .ok_or("table flags: an answer without flags")?;
            *seen = Some(u32::from_be_bytes(flags));
        }
    }
    Ok(None)
}

/// The flags of `inet <table>`; None when it does not exist (Linux).
pub fn flags(table: &str, seq: u32) -> Result<Option<u32>, String> {
    let mut seen = None;
    netlink::request(&flags_request(table, seq), |b| {
        parse_flags(b, seq, &mut seen)
    })
}

/// One transaction updating `inet <table>` to no flags (`seq` its begin,
/// `seq + 1` the update, asking for an ACK, `seq + 2` its end). Sent for a
/// table just read back dormant; one gone meanwhile is made empty, and the
/// skeleton's load that follows fills it.
pub fn wake_batch(table: &str, seq: u32) -> Vec<u8> {
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE;
    let mut m = msg(
        ty,
        NLM_F_REQUEST | NLM_F_ACK,
        seq.wrapping_add(1),
        NFPROTO_INET,
        0,
    );
    m.attr(NFTA_TABLE_NAME, &c_name(table));
    m.attr(NFTA_TABLE_FLAGS, &0u32.to_be_bytes());
    let mut out = netlink::batch_frame(true, seq).to_vec();
    out.extend_from_slice(&m.finish());
    out.extend_from_slice(&netlink::batch_frame(false, seq.wrapping_add(2)));
    out
}

/// Clears `inet <table>`'s flags, dormant among them (Linux).
pub fn wake(table: &str, seq: u32) -> Result<(), String> {
    let what = format!("waking table {table}");
    netlink::transact_built(&wake_batch(table, seq), seq, seq.wrapping_add(1), &what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parent::fw::nft::netlink::answers::{ack, nla, nlmsg};

    fn table_answer(seq: u32, flags: u32) -> Vec<u8> {
        let mut p = vec![NFPROTO_INET, 0, 0, 0];
        p.extend(nla(NFTA_TABLE_NAME, &c_name("qkdpfd")));
        p.extend(nla(NFTA_TABLE_FLAGS, &flags.to_be_bytes()));
        nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE, seq, &p)
    }

    #[test]
    fn the_flags_come_with_the_table_and_its_ack() {
        let mut seen = None;
        assert_eq!(
            parse_flags(&table_answer(7, DORMANT), 7, &mut seen),
            Ok(None)
        );
        assert_eq!(
            parse_flags(&ack(7, 0), 7, &mut seen),
            Ok(Some(Some(DORMANT)))
        );
        let mut one = table_answer(8, 0);
        one.extend(ack(8, 0));
        assert_eq!(parse_flags(&one, 8, &mut None), Ok(Some(Some(0))));
        assert_eq!(
            parse_flags(&ack(9, -libc::ENOENT), 9, &mut None),
            Ok(Some(None))
        );
        assert!(parse_flags(&ack(10, -libc::EPERM), 10, &mut None).is_err());
        assert!(parse_flags(&ack(11, 0), 11, &mut None).is_err(), "no table");
        // Another request's answers are not ours.
        assert_eq!(parse_flags(&ack(12, 0), 13, &mut None), Ok(None));
    }

    #[test]
    fn the_request_and_the_wake_name_the_table() {
        let r = flags_request("qkdpfd", 5);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), (10 << 8) | 1);
        assert!(r.windows(7).any(|w| w == b"qkdpfd\0"));
        let b = wake_batch("qkdpfd", 20);
        // Begin, the update (seq 21, no create flag, flags 0), end.
        let second = &b[20..];
        assert_eq!(u16::from_ne_bytes([second[4], second[5]]), 10 << 8);
        let flags = u16::from_ne_bytes([second[6], second[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(second[8..12].try_into().unwrap()), 21);
        let no_flags = nla(NFTA_TABLE_FLAGS, &0u32.to_be_bytes());
        assert!(second.windows(no_flags.len()).any(|w| w == no_flags));
    }
}
