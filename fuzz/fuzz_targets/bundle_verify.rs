//! The whole `verify` of a bundle from the bytes of a tar (what `qkdctl
//! policy load` sends): read, signature (signify or minisign), list,
//! digests, nothing extra, policy. The seeds were signed by keys whose
//! secret halves were thrown away, so whatever verifies must be one of the
//! seeds' signed lists, and every file must be listed with its digest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::signify::{self, LIST_FILE, MINISIG_FILE, SIG_FILE};
use qkdpfd::policy::verify::{AcceptAll, Verified, VerifyOpts, signed_list_digest, verify};
use qkdpfd::policy::{bundle, document};
use sha2::{Digest, Sha256};

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
        assert_eq!(b.digest, <[u8; 32]>::from(Sha256::digest(list_bytes)));
        let list = signify::parse_list(list_bytes).expect("verified list parses");
        for (name, body) in files.iter() {
            if [SIG_FILE, LIST_FILE, MINISIG_FILE].contains(&name) {
                continue;
            }
            let want = list.get(name).unwrap_or_else(|| panic!("{name} verified unlisted"));
            assert_eq!(&<[u8; 32]>::from(Sha256::digest(body)), want, "{name}");
        }
        for name in list.keys() {
            assert!(files.contains(name), "{name} listed, absent, verified");
        }
        let text = std::str::from_utf8(files.get("policy.toml").expect("listed")).unwrap();
        assert_eq!(document::parse(text).expect("verified policy parses").0, b.policy);
    }
);
