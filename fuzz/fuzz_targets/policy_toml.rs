//! policy.toml: a parsed policy always satisfies its own checks, for the
//! defaults and every link; names in it are names the bundle could hold.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::bundle::check_name;
use qkdpfd::policy::document::{self, valid_link_name};

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Ok((policy, _warnings)) = document::parse(text) else { return };
        let errs = document::link_errors(&policy.defaults);
        assert!(errs.is_empty(), "defaults accepted with errors: {errs:?}");
        for (name, lp) in &policy.links {
            assert!(valid_link_name(name), "link name {name:?} accepted");
            let errs = document::link_errors(lp);
            assert!(errs.is_empty(), "[link.{name}] accepted with errors: {errs:?}");
        }
        for r in [&policy.rulesets.open, &policy.rulesets.lockdown] {
            assert!(check_name(&format!("{r}.nft")).is_ok(), "ruleset {r:?} accepted");
        }
        // The engine gets it as JSON: it must survive the trip.
        let json = serde_json::to_string(&policy).expect("serialises");
        let back: document::Policy = serde_json::from_str(&json).expect("parses back");
        assert_eq!(back, policy);
    }
);
