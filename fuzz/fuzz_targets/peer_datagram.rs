//! Peer datagrams as they arrive on the peering socket: the structure
//! parser and every Keyring check. A datagram has one encoding: whatever
//! parses re-encodes (with its own signature bytes) to exactly the bytes
//! received; only the datagram the far key makes for a message opens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::proto::peer::{self, Keyring, LinkId, MAX_DATAGRAM};
use qkdpfd_fuzz::keys;
use std::sync::OnceLock;

/// Built once: deriving Ed25519 keys per input would be most of the work.
static RING: OnceLock<Keyring> = OnceLock::new();

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(8 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let (any, far) = keys::peer_keys();
        let ring = RING.get_or_init(|| {
            let mut ring = Keyring::new(&any.verifying_key());
            ring.add_link(LinkId([9; 32]), far.verifying_key());
            ring
        });
        let Ok((m, sig)) = peer::parse(data) else {
            assert!(ring.open(data).is_err());
            return;
        };
        assert!(data.len() <= MAX_DATAGRAM);
        if let Ok(opened) = ring.open(data) {
            // Only the far key signs for the link, and Ed25519 signing is
            // deterministic: what opens is exactly what it would send.
            assert_eq!(opened, m);
            assert_eq!(m.encode(far), data, "a datagram the far end never made opened");
        }
        let mut again = m.encode(any);
        let n = again.len();
        again[n - 64..].copy_from_slice(&sig.to_bytes());
        assert_eq!(again, data, "a second encoding of {m:?}");
    }
);
