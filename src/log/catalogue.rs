//! The catalogue of events (DESIGN §8): every name qkdpfd logs, its
//! priority, its fields and what it means, defined here once. Call sites
//! name an [`Event`], never a string; [`super::Record::kv`] refuses (in
//! debug builds, so in every test) a field the catalogue does not list; the
//! LOGGING table of qkdpfd.8 is rendered from this list
//! ([`man_rows`]) and tests/man.rs fails when the page differs; the SIEM
//! rules in contrib/siem/ are checked against the same names.
//!
//! A field written `[name]` is optional. `proc=` is not listed: the parent
//! adds it to every line.

use super::Prio;

/// One catalogue entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    pub name: &'static str,
    /// The priority it is logged at.
    pub prio: Prio,
    /// Other priorities some occurrences use (the doc says when).
    pub also: &'static [Prio],
    /// Its fields in the order they are written; `[x]`: optional.
    pub fields: &'static [&'static str],
    /// What it means, for the man page: when it is logged, what the
    /// fields hold, what the daemon does next.
    pub doc: &'static str,
    /// Logged by qkdsim, not by the daemon (not in qkdpfd.8).
    pub qkdsim: bool,
}

impl Spec {
    /// Whether `key` is one of this event's fields.
    pub fn has_field(&self, key: &str) -> bool {
        self.fields.iter().any(|f| field_name(f) == key)
    }

    /// The field names without the optional marks.
    pub fn field_names(&self) -> impl Iterator<Item = &'static str> {
        self.fields.iter().map(|f| field_name(f))
    }
}

fn field_name(f: &'static str) -> &'static str {
    f.trim_start_matches('[').trim_end_matches(']')
}

macro_rules! catalogue {
    (@qkdsim) => { false };
    (@qkdsim qkdsim) => { true };
    ($(
        $variant:ident $name:literal $prio:ident $([$($also:ident),*])?
            ($($field:literal),*) $($who:ident)? $doc:literal;
    )*) => {
        /// Every event qkdpfd (and qkdsim) logs.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Event { $($variant,)* }

        impl Event {
            /// The catalogue in the man page's order.
            pub const ALL: &'static [Event] = &[$(Event::$variant,)*];

            pub fn spec(self) -> &'static Spec {
                match self {
                    $(Event::$variant => &Spec {
                        name: $name,
                        prio: Prio::$prio,
                        also: &[$($(Prio::$also),*)?],
                        fields: &[$($field),*],
                        doc: $doc,
                        qkdsim: catalogue!(@qkdsim $($who)?),
                    },)*
                }
            }
        }
    };
}

impl Event {
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The entry called `name`, if any.
    pub fn by_name(name: &str) -> Option<Event> {
        Event::ALL.iter().copied().find(|e| e.name() == name)
    }
}

catalogue! {
    Startup "startup" Notice ("version", "links", "policy", "firewall")
        "the daemon is up; policy is the active bundle's serial or none";
    Shutdown "shutdown" Notice [Crit] ("[signal]", "[kernel_state]", "[reason]")
        "notice on a signal, with kernel_state=kept|lockdown; crit with reason=process-failure when the engine died";
    EngineLost "engine_lost" Crit ("msg")
        "the engine died, sent what it may not, fell silent (it says it is alive every second from its main loop; 5 seconds without a word from it count as a stalled engine), or stopped reading (32 MiB queued for it: msg=\"engine stopped reading\"); every link is locked and the parent exits 1";
    PrivdropUnavailable "privdrop_unavailable" Crit ("msg")
        "the engine cannot drop privileges";
    Sandbox "sandbox" Info [Warning]
        ("process", "[no_new_privs]", "[tcp_connect]", "[seccomp]", "[seccomp_default]",
         "[pledge_emulation]", "[missing]", "[landlock]", "[landlock_abi]", "[pledge]", "[unveil]",
         "[sandbox]")
        "what the kernel enforces on process=engine|parent: landlock, landlock_abi, tcp_connect, seccomp (Linux) or pledge, unveil (OpenBSD), sandbox=unavailable-on-this-os elsewhere; warning when the kernel enforced less";
    SandboxProbe "sandbox_probe" Notice ("process", "result")
        "only in test builds (feature sandbox-probe): the errno of each access the engine tried after its sandbox";
    Reload "reload" Notice ("config")
        "the configuration was read again (SIGHUP or qkdctl reload)";
    ReloadFailed "reload_failed" Err ("[config]", "msg")
        "the new configuration was refused; the old one stays";
    PolicyLoaded "policy_loaded" Notice ("serial", "signer", "source")
        "a verified bundle is active; source=qkdctl|incoming";
    PolicyUnchanged "policy_unchanged" Info ("serial", "source")
        "the bundle offered is the active one";
    PolicyRejected "policy_rejected" Err [Alert] ("reason", "[serial]", "source", "msg")
        "a bundle failed a check (reason names it: signature, digest, rollback, expiry, ...) and the active policy stays; alert with source=startup when the active bundle itself fails at start-up (missing, damaged or not the state file's): every link stays locked (no-policy)";
    PolicyWarning "policy_warning" Warning ("serial", "msg")
        "the bundle is active but something in it deserves a look";
    PolicyExpiring "policy_expiring" Warning ("serial", "not_after", "days_left")
        "the active bundle's not_after (seconds since the epoch) is within [policy] expiry_warning; days_left is rounded up (1 on the last day); said at once and then daily until a new bundle is active";
    PolicyExpired "policy_expired" Alert ("serial", "not_after")
        "the active bundle is past not_after (seconds since the epoch); said hourly; with expired_action lockdown every link locks";
    StateWriteFailed "state_write_failed" Crit ("[path]", "msg")
        "the state file could not be written; the write is tried again every second; said for each new record that cannot be written, and once a minute while the same one keeps failing";
    StateWriteRecovered "state_write_recovered" Notice ("path")
        "a state write that had failed went through";
    ImsgTooLarge "imsg_too_large" Crit ("msg")
        "a message between the processes would exceed the channel's 8 MiB (the engine's config with megabytes of TLS files is refused at start-up and on reload instead)";
    EpochRefused "epoch_refused" Err ("link", "epoch", "persisted")
        "the engine asked to persist an epoch past 2^63 and more than 2^32 past the persisted one; the round fails";
    Band "band" Info ("link", "from", "to", "qber")
        "the link's QBER moved into another band";
    Lockdown "lockdown" Alert ("link", "reason", "[qber]", "[threshold]")
        "the link is locked and the kernel reads back locked; for reason qber also qber and threshold";
    LockdownFailed "lockdown_failed" Alert ("link", "kernel", "msg")
        "a lockdown did not read back locked: kernel is what the read-back showed, msg each step and why it failed; repeated every second while it lasts";
    LockdownFallback "lockdown_fallback" Warning [Alert] ("link", "step", "msg")
        "the lockdown held only by a fallback (step) after the steps in msg failed; alert when the step is the removal of the WireGuard peer";
    LockdownRepaired "lockdown_repaired" Notice ("link")
        "a failed lockdown holds again";
    WgPeerRemoved "wg_peer_removed" Alert ("link", "msg")
        "no firewall step held, so the link's WireGuard peer was removed (restore it by hand once the firewall is repaired)";
    WgPeerRestored "wg_peer_restored" Notice ("link")
        "a removed peer is on its interface again";
    FirewallRebuildFailed "firewall_rebuild_failed" Alert ("msg")
        "the default-deny skeleton could not be rebuilt";
    GuardReleaseFailed "guard_release_failed" Err ("link", "msg")
        "the guard stays (the link stays dropped)";
    FirewallLost "firewall_lost" Alert ("firewall", "msg")
        "the default-deny skeleton is damaged (a base chain, jump or drop gone, a foreign rule in a base chain, the table gone after nft flush ruleset; pf disabled or pf.conf without the anchor or block rules); nftables rebuilds it, then each link is put back in its state; logged once a minute while it lasts";
    DeadmanFailed "deadman_failed" Alert ("msg")
        "the dead-man switch could not be armed, refreshed or disarmed (said once per failing streak), or is left lapsed after a start found it so while a link fails to lock";
    GuardianLockdown "guardian_lockdown" Alert ("msg")
        "the parent ended without a clean stop; the guardian locks every link (pf)";
    GuardianLockdownFailed "guardian_lockdown_failed" Alert ("msg")
        "after the guardian's lockdown not every link reads back locked";
    DeadmanTripped "deadman_tripped" Alert ("gap_ms", "msg")
        "the parent's loop did not refresh the switch in time; every link was dropped meanwhile";
    FirewallCheckFailed "firewall_check_failed" Err ("msg")
        "the once-a-second check of the skeleton could not run";
    QberExceeded "qber_exceeded" Alert ("link", "qber", "threshold", "action")
        "the QBER crossed the threshold of a link whose policy says on_qber alert or hold (action)";
    HoldReleased "hold_released" Notice ("link")
        "rotation held for the QBER resumes";
    Unlock "unlock" Notice ("link", "by")
        "the link is open again, by=auto|operator";
    UnlockForced "unlock_forced" Alert ("link")
        "an operator opened the link with unlock -f, whatever its reasons";
    UnlockFailed "unlock_failed" Err ("link", "msg")
        "the link could not be opened; it stays locked";
    StageFailed "stage_failed" Warning ("link", "msg")
        "a ruleset could not be staged for the link; it stays as it was";
    SourceLost "source_lost" Alert ("source", "links", "[commit_us]", "[found_to_commit_us]")
        "every link of the QBER source lost it at once (no fresh reading for qber_timeout): locked together, in one transaction where the firewall can (commit_us: its time; found_to_commit_us: from the engine's finding to the commit); each link also logs lockdown reason=source-lost";
    QberSourceError "qber_source_error" Warning [Err] ("[link]", "source", "[links]", "msg")
        "a QBER reading failed: with link, that link's; without, the document all links of the source read (links: how many), said once per poll; err: the source cannot be opened";
    SimControl "sim_control" Notice ("link", "[eve]", "[noise]")
        "a qkdctl sim command was forwarded to the link's simulated source";
    KeyRotated "key_rotated" Notice ("link", "epoch", "key_id", "psk_fp")
        "a new PSK is installed; psk_fp is its fingerprint (the same on both ends)";
    Round "round" Debug ("link", "epoch", "role", "kme_us", "persist_us", "install_us", "[peer_us]", "[enc_keys_to_installed_us]", "[offer_to_installed_us]")
        "where a completed round's time went (only with -v): the KME call, the parent's epoch persist and install; on the master peer_us (OFFER out to CONFIRM in) and enc_keys_to_installed_us (its enc_keys call to its own install, after the slave's), on the slave offer_to_installed_us";
    KeyRotationFailed "key_rotation_failed" Warning ("link", "reason", "[msg]")
        "a rotation round failed; the next is tried with backoff (reason=weak-psk: the engine handed the parent a PSK of one byte repeated, refused unwritten: a broken or hostile engine)";
    WgSessionKept "wg_session_kept" Warning ("link", "epoch", "reason", "[msg]")
        "the master installed a new PSK but could not re-create its WireGuard peer for a new session ([wireguard] new_session): traffic stays on the previous session's keys until WireGuard's own rekey (at most 120 s); reason=no-such-peer: the peer is gone (nothing passes it), and the next tick's PSK re-read locks the link psk-drift";
    SessionMade "session_made" Info ("link", "after_ms", "tries")
        "a link held for no-session saw a WireGuard handshake newer than its hold, after_ms after the hold began, its peer re-created tries times (the master once, the slave none unless the master's handshake did not come): it opens unless another reason holds it";
    SessionFailed "session_failed" Warning ("link", "reason", "[msg]")
        "a link held for no-session could not have its WireGuard peer re-created; it stays locked and is tried again (said once per wait)";
    KeyStale "key_stale" Alert ("link", "psk", "[reason]")
        "the PSK is older than max_key_age; psk=random when a random PSK replaced it, unchanged (with reason) when that failed";
    PskDrift "psk_drift" Alert ("link", "reason")
        "the interface's PSK is not the one qkdpfd installed (changed behind its back); said once: the link stays locked with psk-drift until a new PSK is installed";
    KmeError "kme_error" Warning ("link", "kme", "msg")
        "a KME call failed; msg holds the HTTP status and the KME's message";
    KmeKeysLow "kme_keys_low" Warning ("link", "kme", "stored_key_count", "threshold")
        "the KME's stored_key_count for the link (asked after each key) fell below the KME's keys_low; said once until it is back at or above, or a reload changed the KME's settings";
    PeerSendFailed "peer_send_failed" Warning ("to", "[suppressed]", "msg")
        "a datagram to the far qkdpfd could not be sent (no socket of its address family, or the kernel refused); once per destination a minute";
    PeerAuthFailed "peer_auth_failed" Warning ("from", "reason", "[link]", "[suppressed]", "[msg]")
        "a datagram was refused (reason: a wire error, wrong-source, wrong-role, answer-budget, offer-budget, bad-signature, ...); one per source a minute and at most one a second (after a burst of 20) for all sources together; past 4,096 failing sources in a minute or past the global budget, one line a minute for all the others with from=*. Datagrams from addresses that are no peer's are sampled (100 a second) before they are logged, so their suppressed is a lower bound. A count no later datagram carries is said on its own once its minute is over, with the last one's reason";
    CtlCommand "ctl_command" Info ("uid", "command")
        "a control command that changes something";
    CtlDenied "ctl_denied" Warning ("uid", "command", "[suppressed]", "[msg]")
        "a control command was refused; from the engine one per uid a minute (then suppressed, said on its own within seconds of the minute's end when no later refusal carries it); from the parent, which re-checks the commands the engine passes it (uid from the kernel, or unknown), each time, with msg, the reason it ran nothing";
    LogDropped "log_dropped" Warning ("dropped")
        "Linux: syslog did not take this many lines (its socket's queue was full: a stalled or slow syslogd or journald); they were dropped rather than stall enforcement. Said with the next line it takes";
    MonitorLagged "monitor_lagged" Warning ("dropped")
        "only on a qkdctl monitor stream, never in syslog: the reader was too slow and missed this many events";
    Flip "flip" Debug ("link", "to", "commit_us", "sample_to_commit_us", "sample_to_kernel_us")
        "the kernel holds the link's new state; the firewall call's own time, and the time from the QBER sample to the kernel's commit and to the state read back and persisted";
    KmeRequest "kme_request" Debug ("kme", "sae", "method", "path", "status") qkdsim
        "qkdsim: one ETSI 014 request and its status";
}

/// The LOGGING table of qkdpfd.8, one `.It` row per event (daemon events
/// only), as mdoc: tests/man.rs compares the page with it.
pub fn man_rows() -> String {
    let mut out = String::new();
    for e in Event::ALL {
        let s = e.spec();
        if s.qkdsim {
            continue;
        }
        let mut prio = prio_name(s.prio).to_string();
        for p in s.also {
            prio.push_str(", ");
            prio.push_str(prio_name(*p));
        }
        out.push_str(&format!(
            ".It Cm {} Ta {} Ta {}: {}\n",
            s.name,
            prio,
            s.fields.join(", "),
            s.doc.replace('\\', "\\e")
        ));
    }
    out
}

pub fn prio_name(p: Prio) -> &'static str {
    match p {
        Prio::Alert => "alert",
        Prio::Crit => "crit",
        Prio::Err => "err",
        Prio::Warning => "warning",
        Prio::Notice => "notice",
        Prio::Info => "info",
        Prio::Debug => "debug",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fields_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for e in Event::ALL {
            let s = e.spec();
            assert!(seen.insert(s.name), "{} twice", s.name);
            assert!(
                s.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                s.name
            );
            assert_eq!(Event::by_name(s.name), Some(*e));
            assert!(!s.also.contains(&s.prio), "{}", s.name);
            for f in s.field_names() {
                assert!(
                    f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{}: {f}",
                    s.name
                );
                assert!(
                    f != "proc" && f != "event",
                    "{}: {f} is the parent's",
                    s.name
                );
            }
            // msg= carries remote text and must be the last pair.
            if let Some(i) = s.field_names().position(|f| f == "msg") {
                assert_eq!(i, s.fields.len() - 1, "{}: msg not last", s.name);
            }
        }
        assert!(Event::by_name("nope").is_none());
    }

    #[test]
    fn the_man_rows_hold_every_daemon_event() {
        let rows = man_rows();
        assert!(rows.contains(".It Cm lockdown Ta alert Ta link, reason, [qber], [threshold]: "));
        assert!(rows.contains(".It Cm shutdown Ta notice, crit Ta "));
        assert!(!rows.contains("kme_request"));
        assert_eq!(rows.lines().count(), Event::ALL.len() - 1);
    }
}
