//! The parent's per-link enforcement: combines the engine's reasons with
//! the parent-owned ones, flips the firewall, persists (DESIGN §5, §6).
//!
//! Lock = apply, then persist; unlock = persist, then apply. A failed flip
//! to lockdown is retried once, then the anchor/chain is emptied (= locked)
//! and `lockdown_failed` is logged. A failed flip to open leaves the link
//! locked; [`Links::reconcile`] retries it on the next tick.

use crate::conf::LinkConf;
use crate::lock::{Enforcement, LockReason, Owner, Reasons};
use crate::log::{self, Prio};
use crate::parent::fw::{Firewall, LinkTarget};
use crate::parent::state::{LinkRecord, State};
use crate::policy::Bundle;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One link as the parent sees it.
pub struct LinkCtl {
    pub target: LinkTarget,
    /// Engine-owned reasons; None until the engine's first report.
    pub engine: Option<Reasons>,
    pub parent: Reasons,
    /// What the kernel holds as far as we know; None = not touched since start.
    pub applied: Option<Enforcement>,
    pub qber: Option<f64>,
    pub threshold: Option<f64>,
}

impl LinkCtl {
    pub fn new(conf: &LinkConf) -> LinkCtl {
        LinkCtl {
            target: target_of(conf),
            engine: None,
            parent: Reasons::EMPTY,
            applied: None,
            qber: None,
            threshold: None,
        }
    }

    pub fn reasons(&self) -> Reasons {
        self.engine.unwrap_or(Reasons::EMPTY).union(self.parent)
    }

    /// What the link should be: until the engine has reported, only a
    /// parent reason changes anything (a restart neither opens a locked link
    /// nor locks an open one without a reason).
    pub fn desired(&self) -> Option<Enforcement> {
        match self.engine {
            None if self.parent.is_empty() => None,
            _ => Some(self.reasons().enforcement()),
        }
    }
}

pub fn target_of(l: &LinkConf) -> LinkTarget {
    LinkTarget::from_conf(l)
}

/// All links plus what they need to flip: the firewall, the active bundle,
/// the state file.
pub struct Links {
    pub links: BTreeMap<String, LinkCtl>,
    pub fw: Box<dyn Firewall>,
    pub state: State,
    pub state_path: PathBuf,
}

/// How a link was opened, for the `unlock` event.
#[derive(Clone, Copy)]
pub enum OpenedBy {
    Auto,
    Operator,
}

impl Links {
    /// Brings every link to its desired state; returns the links that changed.
    pub fn reconcile(
        &mut self,
        bundle: Option<&Bundle>,
        by: OpenedBy,
    ) -> Vec<(String, Enforcement)> {
        let names: Vec<String> = self.links.keys().cloned().collect();
        let mut changed = Vec::new();
        for name in names {
            if let Some(e) = self.converge(&name, bundle, by, false) {
                changed.push((name, e));
            }
        }
        changed
    }

    /// Re-applies every link's current state (a new bundle's rulesets).
    pub fn reapply_all(&mut self, bundle: Option<&Bundle>) {
        let names: Vec<String> = self.links.keys().cloned().collect();
        for name in names {
            self.converge(&name, bundle, OpenedBy::Auto, true);
        }
    }

    /// One link toward its desired state. Returns the new enforcement if it changed.
    pub fn converge(
        &mut self,
        name: &str,
        bundle: Option<&Bundle>,
        by: OpenedBy,
        force: bool,
    ) -> Option<Enforcement> {
        let l = self.links.get(name)?;
        let want = l.desired()?;
        if l.applied == Some(want) && !force {
            if want == Enforcement::Open {
                // Open from before a restart: preload lockdown (a no-op once done).
                self.stage_lockdown(name, bundle);
            }
            return None;
        }
        let before = l.applied;
        match want {
            Enforcement::Lockdown => {
                self.lock(name, bundle);
                self.persist();
            }
            Enforcement::Open => {
                self.persist();
                if !self.open(name, bundle) {
                    return None;
                }
                if before != Some(Enforcement::Open) {
                    let by = match by {
                        OpenedBy::Auto => "auto",
                        OpenedBy::Operator => "operator",
                    };
                    log::event(Prio::Notice, "unlock")
                        .kv("link", name)
                        .kv("by", by)
                        .send();
                }
            }
        }
        (before != Some(want)).then_some(want)
    }

    fn lock(&mut self, name: &str, bundle: Option<&Bundle>) {
        let fw = &mut self.fw;
        let l = self.links.get_mut(name).expect("known link");
        let ruleset = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, fw.extension()));
        let result = match ruleset {
            Some(r) => fw
                .apply(&l.target, Enforcement::Lockdown, r)
                .or_else(|_| fw.apply(&l.target, Enforcement::Lockdown, r)),
            // No policy: an empty anchor/chain is the lockdown.
            None => fw.clear(&l.target),
        };
        if let Err(e) = result {
            let cleared = fw.clear(&l.target);
            log::event(Prio::Alert, "lockdown_failed")
                .kv("link", name)
                .kv("cleared", if cleared.is_ok() { "yes" } else { "no" })
                .msg(e)
                .send();
        }
        l.applied = Some(Enforcement::Lockdown);
    }

    fn open(&mut self, name: &str, bundle: Option<&Bundle>) -> bool {
        let fw = &mut self.fw;
        let l = self.links.get_mut(name).expect("known link");
        let Some(r) = bundle.and_then(|b| b.ruleset(Enforcement::Open, fw.extension())) else {
            return false;
        };
        match fw.apply(&l.target, Enforcement::Open, r) {
            Ok(()) => {
                l.applied = Some(Enforcement::Open);
                // Preload the lockdown rules so the next flip is quick.
                let lock = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, fw.extension()));
                if let Some(Err(e)) = lock.map(|lr| fw.stage(&l.target, Enforcement::Lockdown, lr))
                {
                    log::event(Prio::Warning, "stage_failed")
                        .kv("link", name)
                        .msg(e)
                        .send();
                }
                true
            }
            Err(e) => {
                log::event(Prio::Err, "unlock_failed")
                    .kv("link", name)
                    .msg(e)
                    .send();
                false
            }
        }
    }

    /// Preloads the link's lockdown rules so the next flip is quick.
    fn stage_lockdown(&mut self, name: &str, bundle: Option<&Bundle>) {
        let fw = &mut self.fw;
        let Some(l) = self.links.get(name) else {
            return;
        };
        let lock = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, fw.extension()));
        if let Some(Err(e)) = lock.map(|r| fw.stage(&l.target, Enforcement::Lockdown, r)) {
            log::event(Prio::Warning, "stage_failed")
                .kv("link", name)
                .msg(e)
                .send();
        }
    }

    /// Writes the persisted reasons of every link (write, fsync, rename).
    pub fn persist(&mut self) {
        let mut links = BTreeMap::new();
        for (name, l) in &self.links {
            let rec = LinkRecord {
                reasons: l.reasons().persisted(),
                epoch: self.epoch(name),
            };
            if !rec.is_empty() {
                links.insert(name.clone(), rec);
            }
        }
        if links == self.state.links {
            return;
        }
        self.state.links = links;
        if let Err(e) = crate::parent::state::save(&self.state_path, &self.state) {
            log::event(Prio::Crit, "state_write_failed")
                .kv("path", self.state_path.display())
                .msg(e)
                .send();
        }
    }

    /// The firewall skeleton vanished (`nft flush ruleset`, an edited base
    /// chain): rebuild it — every link chain comes back empty, that is locked —
    /// then put each link back in the state its reasons call for.
    pub fn rebuild_if_lost(&mut self, targets: &[LinkTarget], bundle: Option<&Bundle>) {
        match self.fw.intact(targets) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                log::event(Prio::Err, "firewall_check_failed").msg(e).send();
                return;
            }
        }
        log::event(Prio::Alert, "firewall_lost")
            .kv("firewall", self.fw.name())
            .msg("default-deny skeleton missing from the kernel: rebuilding")
            .send();
        if let Err(e) = self.fw.init(targets) {
            log::event(Prio::Alert, "lockdown_failed")
                .kv("link", "all")
                .msg(e)
                .send();
            return;
        }
        for l in self.links.values_mut() {
            l.applied = Some(Enforcement::Lockdown);
        }
        self.reapply_all(bundle);
    }

    /// The persisted key-agreement epoch of a link (0: none yet).
    pub fn epoch(&self, name: &str) -> u64 {
        self.state.links.get(name).map_or(0, |r| r.epoch)
    }

    /// Makes new epochs durable in one write (write, fsync, rename, fsync
    /// the directory). Epochs only grow; on error the file is unchanged
    /// on disk and so is the state in memory.
    pub fn persist_epochs(&mut self, updates: &[(String, u64)]) -> std::io::Result<()> {
        let mut next = self.state.clone();
        for (name, epoch) in updates {
            let rec = next.links.entry(name.clone()).or_default();
            rec.epoch = rec.epoch.max(*epoch);
        }
        crate::parent::state::save(&self.state_path, &next)?;
        self.state = next;
        Ok(())
    }

    /// Sets or clears parent-owned reasons; logs `lockdown` for each added one.
    pub fn set_parent_reason(&mut self, name: &str, r: LockReason, on: bool) {
        debug_assert_eq!(r.owner(), Owner::Parent);
        let Some(l) = self.links.get_mut(name) else {
            return;
        };
        if on {
            if l.parent.insert(r) {
                log::event(Prio::Alert, "lockdown")
                    .kv("link", name)
                    .kv("reason", r)
                    .send();
            }
        } else {
            l.parent.remove(r);
        }
    }

    /// Takes a new engine-owned reason set; logs `lockdown` for each added one.
    pub fn set_engine_reasons(
        &mut self,
        name: &str,
        reasons: Reasons,
        qber: Option<f64>,
        threshold: Option<f64>,
    ) {
        let Some(l) = self.links.get_mut(name) else {
            return;
        };
        let before = l.engine.unwrap_or(Reasons::EMPTY);
        for r in reasons.iter().filter(|r| !before.contains(*r)) {
            let mut ev = log::event(Prio::Alert, "lockdown")
                .kv("link", name)
                .kv("reason", r);
            if r == LockReason::Qber {
                if let Some(q) = qber {
                    ev = ev.kv("qber", format!("{q:.4}"));
                }
                if let Some(t) = threshold {
                    ev = ev.kv("threshold", t);
                }
            }
            ev.send();
        }
        // First fresh report: the engine has fresh state, process-failure ends.
        if l.engine.is_none() {
            l.parent.remove(LockReason::ProcessFailure);
        }
        l.engine = Some(reasons);
        l.qber = qber;
        l.threshold = threshold;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parent::fw::FwError;
    use crate::parent::state;
    use crate::policy::{ExpiredAction, Files, Policy, Rulesets};
    use std::sync::{Arc, Mutex};

    /// Records every call; fails the first `fail_applies` applies.
    #[derive(Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<String>>>,
        fail_applies: usize,
        fail_clear: bool,
    }

    impl Firewall for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn extension(&self) -> &'static str {
            "nft"
        }
        fn init(&mut self, _: &[LinkTarget]) -> Result<(), FwError> {
            Ok(())
        }
        fn apply(&mut self, l: &LinkTarget, s: Enforcement, r: &str) -> Result<(), FwError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("apply {} {s} {}", l.name, r.trim()));
            if self.fail_applies > 0 {
                self.fail_applies -= 1;
                return Err(FwError::refused("injected"));
            }
            Ok(())
        }
        fn clear(&mut self, l: &LinkTarget) -> Result<(), FwError> {
            self.calls.lock().unwrap().push(format!("clear {}", l.name));
            if self.fail_clear {
                return Err(FwError::refused("injected"));
            }
            Ok(())
        }
        fn check(&self, _: &LinkTarget, _: Enforcement, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn has_rules(&mut self, _: &LinkTarget) -> Result<bool, FwError> {
            Ok(false)
        }
    }

    fn bundle() -> Bundle {
        let mut m = BTreeMap::new();
        m.insert("anchors/open.nft".to_string(), b"accept\n".to_vec());
        m.insert("anchors/lockdown.nft".to_string(), b"drop\n".to_vec());
        Bundle {
            policy: Policy {
                serial: 1,
                not_after: None,
                expired_action: ExpiredAction::Keep,
                defaults: Default::default(),
                links: BTreeMap::new(),
                rulesets: Rulesets {
                    open: "anchors/open".into(),
                    lockdown: "anchors/lockdown".into(),
                },
            },
            files: Files::from_map(m).unwrap(),
            digest: [0; 32],
            signer: "test".into(),
            warnings: Vec::new(),
        }
    }

    fn links(fw: Fake, dir: &std::path::Path) -> Links {
        let conf = crate::conf::parse(
            "t.conf",
            "[policy]\npubkeys = [\"/k.pub\"]\n[qber.s]\ndriver = \"sim\"\n\
             [link.dr]\nqber = \"s\"\nqber_id = \"x\"\nwg_interface = \"wg0\"\nwg_port = 51820\n\
             addresses = [\"192.0.2.2\"]\n",
        )
        .unwrap();
        let mut map = BTreeMap::new();
        map.insert("dr".to_string(), LinkCtl::new(&conf.link["dr"]));
        Links {
            links: map,
            fw: Box::new(fw),
            state: State::default(),
            state_path: dir.join("state"),
        }
    }

    #[test]
    fn failed_lockdown_is_retried_then_cleared() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake {
            fail_applies: 2,
            ..Fake::default()
        };
        let calls = fake.calls.clone();
        let mut l = links(fake, t.path());
        l.set_parent_reason("dr", LockReason::Operator, true);
        let b = bundle();
        assert_eq!(
            l.converge("dr", Some(&b), OpenedBy::Auto, false),
            Some(Enforcement::Lockdown)
        );
        assert_eq!(
            *calls.lock().unwrap(),
            [
                "apply dr lockdown drop",
                "apply dr lockdown drop",
                "clear dr"
            ]
        );
        // Lock = apply, then persist: the operator reason is on disk.
        let st = state::load(&t.path().join("state")).unwrap().unwrap();
        assert!(st.links["dr"].reasons.contains(LockReason::Operator));
    }

    #[test]
    fn failed_open_stays_locked_and_is_retried() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake {
            fail_applies: 1,
            ..Fake::default()
        };
        let calls = fake.calls.clone();
        let mut l = links(fake, t.path());
        l.links.get_mut("dr").unwrap().applied = Some(Enforcement::Lockdown);
        l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
        let b = bundle();
        assert_eq!(l.converge("dr", Some(&b), OpenedBy::Auto, false), None);
        assert_eq!(l.links["dr"].applied, Some(Enforcement::Lockdown));
        // The next tick's reconcile retries and opens.
        let changed = l.reconcile(Some(&b), OpenedBy::Auto);
        assert_eq!(changed, [("dr".to_string(), Enforcement::Open)]);
        assert_eq!(
            calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.starts_with("apply dr open"))
                .count(),
            2
        );
    }

    #[test]
    fn no_policy_means_cleared_and_never_opened() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let calls = fake.calls.clone();
        let mut l = links(fake, t.path());
        l.set_engine_reasons("dr", Reasons::EMPTY, None, None);
        l.set_parent_reason("dr", LockReason::NoPolicy, true);
        l.reconcile(None, OpenedBy::Auto);
        assert_eq!(*calls.lock().unwrap(), ["clear dr"]);
        // Even with the reason gone, no bundle means no open ruleset: stays locked.
        l.set_parent_reason("dr", LockReason::NoPolicy, false);
        assert!(l.reconcile(None, OpenedBy::Auto).is_empty());
        assert_eq!(l.links["dr"].applied, Some(Enforcement::Lockdown));
    }

    #[test]
    fn silent_engine_keeps_kernel_state() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let calls = fake.calls.clone();
        let mut l = links(fake, t.path());
        assert_eq!(l.links["dr"].desired(), None);
        assert!(l.reconcile(Some(&bundle()), OpenedBy::Auto).is_empty());
        assert!(
            calls.lock().unwrap().is_empty(),
            "nothing touched before the engine reports"
        );
        // Engine's first report clears process-failure (fresh state).
        l.set_parent_reason("dr", LockReason::ProcessFailure, true);
        l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), None);
        assert!(!l.links["dr"].parent.contains(LockReason::ProcessFailure));
    }
}
