//! Structure-aware bundles, signed in the target (signify, the fuzz key):
//! the fuzzer works past the signature on what a signer could be tricked
//! into signing or a store could hold — lists with missing, extra,
//! duplicated or wrong entries, files not listed, a plain `SHA256` beside
//! the embedded one, odd names, odd policies, an active bundle's serial.
//! Whatever verifies has every file listed with its digest and every listed
//! file present, and is newer than the active bundle or that very bundle.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::bundle::Files;
use qkdpfd::policy::signify::{LIST_FILE, MINISIG_FILE, SIG_FILE};
use qkdpfd::policy::verify::{AcceptAll, Floor, Verified, VerifyOpts, verify};
use qkdpfd_fuzz::keys;
use qkdpfd_fuzz::wire::hex;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const POLICY: &str = include_str!("../../pf-anchors/bundle/policy.toml");

#[derive(Arbitrary, Debug)]
enum Name {
    Policy,
    Open,
    Lockdown,
    Sig,
    List,
    Minisig,
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Policy => "policy.toml".into(),
            Name::Open => "anchors/open.nft".into(),
            Name::Lockdown => "anchors/lockdown.nft".into(),
            Name::Sig => SIG_FILE.into(),
            Name::List => LIST_FILE.into(),
            Name::Minisig => MINISIG_FILE.into(),
            Name::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Line {
    /// The right digest of a file in the bundle (by index).
    Right(u8),
    /// A digest for a name, right or wrong.
    Digest(Name, [u8; 32]),
    /// Any text as a line.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Plain {
    /// No `SHA256` beside `SHA256.sig`.
    Absent,
    /// The signed list again.
    Same,
    /// Other bytes.
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Replaces the shipped policy when set.
    policy: Option<String>,
    /// Appended to the policy.
    policy_tail: String,
    open: Vec<u8>,
    lockdown: Vec<u8>,
    extra: Vec<(Name, Vec<u8>)>,
    lines: Vec<Line>,
    no_newline_at_end: bool,
    plain: Plain,
    /// The active bundle: its serial, and whether it is this very list.
    floor: Option<(u64, bool)>,
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(32 * qkdpfd_fuzz::MIB),
    |input: Input| {
        let mut map = BTreeMap::new();
        let policy = input.policy.clone().unwrap_or_else(|| POLICY.to_string());
        map.insert("policy.toml".to_string(), (policy + &input.policy_tail).into_bytes());
        map.insert("anchors/open.nft".to_string(), input.open.clone());
        map.insert("anchors/lockdown.nft".to_string(), input.lockdown.clone());
        for (n, body) in &input.extra {
            map.insert(n.text(), body.clone());
        }
        let names: Vec<String> = map.keys().cloned().collect();
        let mut list = String::new();
        for l in &input.lines {
            match l {
                Line::Right(i) if !names.is_empty() => {
                    let n = &names[*i as usize % names.len()];
                    list += &format!("SHA256 ({n}) = {}\n", hex(&Sha256::digest(&map[n])));
                }
                Line::Right(_) => {}
                Line::Digest(n, d) => list += &format!("SHA256 ({}) = {}\n", n.text(), hex(d)),
                Line::Raw(s) => list += &format!("{s}\n"),
            }
        }
        if input.no_newline_at_end {
            list.pop();
        }
        map.insert(SIG_FILE.into(), keys::signify_embedded(list.as_bytes()));
        match &input.plain {
            Plain::Absent => {}
            Plain::Same => {
                map.insert(LIST_FILE.into(), list.clone().into_bytes());
            }
            Plain::Other(b) => {
                map.insert(LIST_FILE.into(), b.clone());
            }
        }
        let Ok(files) = Files::from_map(map) else { return };
        let list_digest: [u8; 32] = Sha256::digest(list.as_bytes()).into();
        let floor = input.floor.map(|(serial, same)| Floor {
            serial,
            digest: if same { list_digest } else { [0x5a; 32] },
        });
        let opts = VerifyOpts {
            now_unix: 1_800_000_000,
            floor,
            check_expiry: true,
            links: vec!["dr".into()],
        };
        let keys = std::slice::from_ref(keys::bundle_pub());
        let b = match verify(&files, keys, &opts, &AcceptAll("nft")) {
            Ok(Verified::New(b)) => b,
            Ok(Verified::Unchanged { serial }) => {
                let f = floor.expect("unchanged from no active bundle");
                assert_eq!((serial, f.digest), (f.serial, list_digest), "unchanged, but not");
                return;
            }
            Err(_) => return,
        };
        if let Some(f) = floor {
            assert!(b.policy.serial > f.serial, "serial {} over {}: a rollback", b.policy.serial, f.serial);
        }

        if let Some(plain) = files.get(LIST_FILE) {
            assert_eq!(plain, list.as_bytes(), "a different SHA256 verified");
        }
        qkdpfd_fuzz::assert_verified(&files, list.as_bytes(), &b);
        for state in [qkdpfd::lock::Enforcement::Open, qkdpfd::lock::Enforcement::Lockdown] {
            assert!(b.ruleset(state, "nft").is_some(), "{state} ruleset missing");
        }
    }
);
