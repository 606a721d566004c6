//! Tests of the peer protocol's wire format and keyring: encoding and
//! parsing, every refusal, signatures and the checks before them.

use super::*;
use std::collections::HashSet;

fn key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}

fn msg(body: Body) -> Message {
    Message {
        link_id: LinkId([9; 32]),
        sender: key(1).verifying_key().to_bytes(),
        receiver: key(2).verifying_key().to_bytes(),
        epoch: 0x0102030405060708,
        nonce: [0xaa; 16],
        key_id: KeyId::new("bc490419-7d60-487f-adc1-4ddcc177c139").unwrap(),
        body,
    }
}

/// The receiver's keyring: it knows link [9;32] with peer key(1).
fn ring() -> Keyring {
    let mut r = Keyring::new(&key(2).verifying_key());
    r.add_link(LinkId([9; 32]), key(1).verifying_key());
    r.add_link(LinkId([8; 32]), key(3).verifying_key());
    r
}

const BODIES: [Body; 3] = [
    Body::Offer,
    Body::Confirm { tag: [0x55; 32] },
    Body::Nack { last: 77 },
];

#[test]
fn round_trip_every_type() {
    for b in BODIES {
        let m = msg(b);
        let wire = m.encode(&key(1));
        assert_eq!(
            wire.len(),
            127 + m.key_id.len() + Body::len_for(b.type_byte()).unwrap() + 64
        );
        assert_eq!(&wire[..6], &[b'Q', b'K', b'D', b'P', 1, b.type_byte()]);
        assert_eq!(ring().open(&wire), Ok(m));
    }
}

#[test]
fn longest_datagram_is_the_limit() {
    let mut m = msg(Body::Confirm { tag: [1; 32] });
    m.key_id = KeyId::new(&"a".repeat(64)).unwrap();
    let wire = m.encode(&key(1));
    assert_eq!(wire.len(), MAX_DATAGRAM);
    assert!(ring().open(&wire).is_ok());
    let mut big = wire.clone();
    big.push(0);
    assert_eq!(ring().open(&big), Err(WireError::Oversize));
}

#[test]
fn every_truncation_is_refused() {
    for b in BODIES {
        let wire = msg(b).encode(&key(1));
        for n in 0..wire.len() {
            let e = ring().open(&wire[..n]).unwrap_err();
            assert!(
                matches!(e, WireError::Truncated | WireError::KeyIdLength),
                "{n}: {e}"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut wire = msg(Body::Offer).encode(&key(1));
    wire.push(0);
    assert_eq!(ring().open(&wire), Err(WireError::TrailingBytes));
}

#[test]
fn header_errors_are_distinct() {
    let wire = msg(Body::Offer).encode(&key(1));
    let with = |i: usize, v: u8| {
        let mut w = wire.clone();
        w[i] = v;
        ring().open(&w).unwrap_err()
    };
    assert_eq!(with(0, b'X'), WireError::BadMagic);
    assert_eq!(with(4, 2), WireError::BadVersion);
    assert_eq!(with(5, 0), WireError::BadType);
    assert_eq!(with(5, 4), WireError::BadType);
    assert_eq!(with(126, 0), WireError::KeyIdLength);
    assert_eq!(with(126, 65), WireError::KeyIdLength);
    assert_eq!(with(127, b'_'), WireError::KeyIdCharset);
    assert_eq!(with(127, 0xc3), WireError::KeyIdCharset);
    // A CONFIRM type byte on an OFFER's length: the lengths disagree.
    assert_eq!(with(5, 2), WireError::Truncated);
    assert_eq!(with(5, 3), WireError::Truncated);
}

#[test]
fn key_checks_come_before_the_signature() {
    let m = msg(Body::Offer);
    let mut other = m.clone();
    other.receiver = key(4).verifying_key().to_bytes();
    assert_eq!(
        ring().open(&other.encode(&key(1))),
        Err(WireError::NotForUs)
    );
    let mut unknown = m.clone();
    unknown.sender = key(5).verifying_key().to_bytes();
    assert_eq!(
        ring().open(&unknown.encode(&key(5))),
        Err(WireError::UnknownSender)
    );
    let mut nolink = m.clone();
    nolink.link_id = LinkId([7; 32]);
    assert_eq!(
        ring().open(&nolink.encode(&key(1))),
        Err(WireError::UnknownLink)
    );
    // key(3) is a known peer, but link [9;32] is key(1)'s.
    let mut wrong = m.clone();
    wrong.sender = key(3).verifying_key().to_bytes();
    assert_eq!(
        ring().open(&wrong.encode(&key(3))),
        Err(WireError::WrongPeer)
    );
    // key(1)'s name, key(3)'s signature.
    assert_eq!(
        ring().open(&m.encode(&key(3))),
        Err(WireError::BadSignature)
    );
}

#[test]
fn every_flipped_bit_is_refused() {
    for b in BODIES {
        let wire = msg(b).encode(&key(1));
        for i in 0..wire.len() {
            for bit in [0x01u8, 0x80] {
                let mut w = wire.clone();
                w[i] ^= bit;
                assert!(ring().open(&w).is_err(), "byte {i} bit {bit:#x} accepted");
            }
        }
    }
}

#[test]
fn the_signature_is_domain_separated() {
    // A plain Ed25519 signature over the covered bytes, without the
    // context string, must not verify.
    let m = msg(Body::Offer);
    let mut wire = m.encode(&key(1));
    let n = wire.len();
    let plain = key(1).sign(&wire[5..n - 64]);
    wire[n - 64..].copy_from_slice(&plain.to_bytes());
    assert_eq!(ring().open(&wire), Err(WireError::BadSignature));
}

#[test]
fn error_names_are_distinct() {
    use WireError::*;
    let all = [
        Oversize,
        Truncated,
        TrailingBytes,
        BadMagic,
        BadVersion,
        BadType,
        KeyIdLength,
        KeyIdCharset,
        NotForUs,
        UnknownSender,
        UnknownLink,
        WrongPeer,
        BadSignature,
    ];
    let names: HashSet<&str> = all.iter().map(|e| e.as_str()).collect();
    assert_eq!(names.len(), all.len());
}

#[test]
fn check_passes_what_open_would_verify_and_defers_the_signature() {
    let m = msg(Body::Nack { last: 4 });
    let wire = m.encode(&key(1));
    let r = ring();
    let u = r.check(&wire).unwrap();
    assert_eq!(u.claims(), &m);
    assert_eq!(u.verify(), Ok(m.clone()));
    // A bad signature passes check (it costs no verification) and fails
    // verify: the engine refuses what it can in between.
    let mut bad = wire.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let u = r.check(&bad).unwrap();
    assert_eq!(u.claims(), &m);
    assert_eq!(u.verify(), Err(WireError::BadSignature));
    // Everything else is refused by check itself, as by open.
    let mut other = m.clone();
    other.receiver = key(5).verifying_key().to_bytes();
    assert_eq!(
        r.check(&other.encode(&key(1))).err(),
        Some(WireError::NotForUs)
    );
    assert_eq!(r.check(&wire[..n - 1]).err(), Some(WireError::Truncated));
}
