//! Near-valid signed datagrams: a message the far gateway really signed
//! (structure from the fuzzer), then optionally bent — a byte changed,
//! bytes cut or added, signed by the wrong key, sent to or from the wrong
//! party. The Keyring opens the untouched datagram to the same message and
//! refuses every datagram whose bytes differ.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qkdpfd::proto::peer::{Body, KeyId, Keyring, LinkId, Message};
use qkdpfd_fuzz::keys;

#[derive(Arbitrary, Debug)]
enum Kind {
    Offer,
    Confirm([u8; 32]),
    Nack(u64),
}

#[derive(Arbitrary, Debug)]
enum Bend {
    None,
    Byte(u16, u8),
    Cut(u16),
    Add(Vec<u8>),
    SignedByUs,
    OtherLink([u8; 32]),
    ToSomeoneElse([u8; 32]),
}

#[derive(Arbitrary, Debug)]
struct Input {
    epoch: u64,
    nonce: [u8; 16],
    key_id: String,
    kind: Kind,
    bend: Bend,
}

const LINK: LinkId = LinkId([9; 32]);
static RING: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(8 * qkdpfd_fuzz::MIB),
    |input: Input| {
        let Ok(key_id) = KeyId::new(&input.key_id) else { return };
        let (ours, far) = keys::peer_keys();
        let ring = RING.get_or_init(|| {
            let mut ring = Keyring::new(&ours.verifying_key());
            ring.add_link(LINK, far.verifying_key());
            ring
        });
        let mut m = Message {
            link_id: LINK,
            sender: far.verifying_key().to_bytes(),
            receiver: ours.verifying_key().to_bytes(),
            epoch: input.epoch,
            nonce: input.nonce,
            key_id,
            body: match input.kind {
                Kind::Offer => Body::Offer,
                Kind::Confirm(tag) => Body::Confirm { tag },
                Kind::Nack(last) => Body::Nack { last },
            },
        };
        let good = m.encode(far);
        assert_eq!(ring.open(&good).as_ref(), Ok(&m), "a signed datagram refused");
        let bent = match input.bend {
            Bend::None => return,
            Bend::Byte(at, x) => {
                let mut b = good.clone();
                let i = at as usize % b.len();
                b[i] ^= x.max(1);
                b
            }
            Bend::Cut(n) => good[..good.len() - 1 - (n as usize % good.len())].to_vec(),
            Bend::Add(more) if more.is_empty() => return,
            Bend::Add(more) => [good.clone(), more].concat(),
            Bend::SignedByUs => m.encode(ours),
            Bend::OtherLink(l) if l == LINK.0 => return,
            Bend::OtherLink(l) => {
                m.link_id = LinkId(l);
                m.encode(far)
            }
            Bend::ToSomeoneElse(r) if r == m.receiver => return,
            Bend::ToSomeoneElse(r) => {
                m.receiver = r;
                m.encode(far)
            }
        };
        assert_ne!(bent, good);
        assert!(ring.open(&bent).is_err(), "a bent datagram opened: {bent:?}");
    }
);
