//! Scenarios of tests/siem.rs on A's config or store: the KME's stock
//! under `keys_low` and the wall clock past the active bundle's
//! `not_after` (the daemon's own seam, `[testing] wall_clock_offset`; the
//! host's clock is left alone), each undone after it; and, last, A's active
//! bundle damaged while A is stopped.

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

/// After `engine_failure` (A stopped): a byte added to a file of A's
/// active bundle in its store, then A started. The bundle fails its check
/// at start-up: `policy_rejected source=startup` at LOG_ALERT, and the
/// link stays locked (no-policy).
pub fn policy_damaged(s: &mut Siem) {
    assert!(s.pids[A].is_none(), "A is stopped by engine_failure");
    let state: serde_json::Value = serde_json::from_str(&super::common::durable_state(
        &s.pair.path(A, "state/state"),
    ))
    .unwrap();
    let serial = state["active"]["serial"]
        .as_u64()
        .expect("an active bundle");
    let file = s
        .pair
        .path(A, &format!("state/policy/{serial}/policy.toml"));
    let mut perm = std::fs::metadata(&file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&file, perm).unwrap();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("# changed on disk\n");
    std::fs::write(&file, text).unwrap();
    let (from, started) = s.begin(A);
    s.start(A);
    s.finish(
        A,
        "policy_damaged",
        &from,
        started,
        &[want(
            "policy_rejected",
            &[
                ("proc", "parent"),
                ("source", "startup"),
                ("severity", "alert"),
            ],
        )],
    );
    assert_eq!(s.show(A)["enforcement"], "lockdown", "no policy: locked");
}
