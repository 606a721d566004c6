//! The signed `SHA256` list: what parses renders back to a list that
//! parses to the same entries; no signature file is ever listed, and every
//! name is one the bundle reader would accept.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::bundle::check_name;
use qkdpfd::policy::signify::{self, LIST_FILE, MINISIG_FILE, SIG_FILE};

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(16 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Ok(list) = signify::parse_list(data) else { return };
        assert!(!list.is_empty());
        let mut text = String::new();
        for (name, digest) in &list {
            assert!(check_name(name).is_ok(), "{name:?} listed");
            assert!(![SIG_FILE, LIST_FILE, MINISIG_FILE].contains(&name.as_str()));
            text.push_str(&format!("SHA256 ({name}) = {}\n", qkdpfd_fuzz::wire::hex(digest)));
        }
        let again = signify::parse_list(text.as_bytes()).expect("a rendered list parses");
        assert_eq!(again, list);
    }
);
