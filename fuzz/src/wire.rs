//! Encoders for replies the daemon only parses: netlink messages with
//! attributes (the WireGuard genl family, nf_tables' NEWGEN), and the
//! WireGuard UAPI `get` text. The targets build a reply from structured
//! input, parse it with the daemon's code and compare with what they put in.

/// A netlink attribute: type, then data (padded to 4 bytes on the wire).
pub fn nla(ty: u16, data: &[u8]) -> Vec<u8> {
    let len = 4 + data.len();
    assert!(
        len <= u16::MAX as usize,
        "an attribute of {len} bytes cannot be built"
    );
    let mut out = Vec::with_capacity(len + 3);
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// A nested attribute (NLA_F_NESTED set, as the kernel sends them).
pub fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    nla(ty | 0x8000, &parts.concat())
}

/// A netlink message: 16-byte header, then the payload.
pub fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut out = Vec::with_capacity(len + 3);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// Lowercase hex of a key, as UAPI writes it.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
