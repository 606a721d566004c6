//! Two scenarios of tests/siem.rs on A's config, each undone after it:
//! the KME's stock under `keys_low`, and the wall clock past the active
//! bundle's `not_after` (the daemon's own seam, `[testing]
//! wall_clock_offset`; the host's clock is left alone).

use super::Siem;
use super::common::pair::A;
use super::common::siem::want;

/// Appends `extra` to A's config (its last section is `[testing]`) or,
/// with `None`, puts the saved text back; then `qkdctl reload`.
fn reconfigure(s: &Siem, base: &str, edit: impl FnOnce(&str) -> String) {
    let conf = s.pair.path(A, "qkdpfd.conf");
    std::fs::write(&conf, edit(base)).unwrap();
    s.pair.ctl_ok(A, &["reload"]);
}

/// `[kme.site] keys_low` above any stock qkdsim holds: after the next key
/// the KME's stored_key_count is low (`kme_keys_low`).
pub fn kme_keys_low(s: &mut Siem) {
    let conf = s.pair.path(A, "qkdpfd.conf");
    let base = std::fs::read_to_string(&conf).unwrap();
    let (from, started) = s.begin(A);
    reconfigure(s, &base, |t| {
        t.replacen("[kme.site]\n", "[kme.site]\nkeys_low = 1000000\n", 1)
    });
    let objects = s.finish(
        A,
        "kme_keys_low",
        &from,
        started,
        &[want(
            "kme_keys_low",
            &[("proc", "engine"), ("link", "dr"), ("threshold", "1000000")],
        )],
    );
    reconfigure(s, &base, str::to_string);
    let low = objects
        .iter()
        .filter(|o| o["event"] == "kme_keys_low")
        .count();
    assert_eq!(low, 1, "said once while the stock stays low");
}

/// A day and a half forward: the bundle of `policy_expiring` (a day from
/// `not_after`) is past it (`policy_expired`); then back.
pub fn policy_expired(s: &mut Siem) {
    let conf = s.pair.path(A, "qkdpfd.conf");
    let base = std::fs::read_to_string(&conf).unwrap();
    let (from, started) = s.begin(A);
    reconfigure(s, &base, |t| format!("{t}\nwall_clock_offset = 129600\n"));
    s.finish(
        A,
        "policy_expired",
        &from,
        started,
        &[want("policy_expired", &[("proc", "parent")])],
    );
    reconfigure(s, &base, str::to_string);
}
