//! The whole `verify` of a bundle from the bytes of a tar (what `qkdctl
//! policy load` sends): read, signature (signify or minisign), list,
//! digests, nothing extra, policy. The seeds were signed by keys whose
//! secret halves were thrown away, so whatever verifies must be one of the
//! seeds' signed lists, and every file must be listed with its digest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::bundle;
use qkdpfd::policy::signify::{self, LIST_FILE, SIG_FILE};
use qkdpfd::policy::verify::{AcceptAll, Verified, VerifyOpts, signed_list_digest, verify};

const SIGNIFY_PUB: &str = include_str!("../seeds/keys/signify.pub");
const MINISIGN_PUB: &str = include_str!("../seeds/keys/minisign.pub");
/// The lists the two seed bundles signed.
const SIGNED: [&[u8]; 2] = [
    include_bytes!("../seeds/keys/signify.list"),
    include_bytes!("../seeds/keys/minisign.list"),
];

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(40 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Ok(files) = bundle::read_bytes(data) else { return };
        let keys = [
            signify::parse_pubkey(SIGNIFY_PUB).expect("seed key"),
            signify::parse_pubkey(MINISIGN_PUB).expect("seed key"),
        ];
        let opts = VerifyOpts {
            now_unix: 1_800_000_000,
            floor: None,
            check_expiry: true,
            links: vec!["dr".into(), "l1".into()],
        };
        let Ok(Verified::New(b)) = verify(&files, &keys, &opts, &AcceptAll("nft")) else {
            return;
        };
        let list_bytes = match files.get(SIG_FILE) {
            Some(sig) => signify::parse_embedded(sig).expect("verified").message,
            None => files.get(LIST_FILE).expect("verified"),
        };
        assert!(SIGNED.contains(&list_bytes), "an unsigned list verified");
        assert_eq!(signed_list_digest(&files), Some(b.digest));
        qkdpfd_fuzz::assert_verified(&files, list_bytes, &b);
    }
);
