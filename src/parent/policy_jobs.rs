//! Bundle activation without holding up a lockdown (DESIGN §5; fail-closed
//! issue item 6). A pushed bundle — `qkdctl policy load` or the GitOps
//! spool — is verified on a worker thread ([`activate::verify_in_background`]:
//! signature, digests, two tool checks per link), while the parent's loop
//! goes on taking engine reports. When the worker answers, the loop stores
//! the bundle and names it active ([`activate::finish`]), then re-applies
//! the links a few per loop turn ([`Parent::reapply`]: those that only
//! open or only lock again together, any other alone), engine messages
//! first, so a QBER lockdown waits behind at most one such turn (one tool
//! run or one bulk transaction), never behind every link's rulesets.
//!
//! One bundle at a time: a second `policy load` meanwhile is refused with
//! a reason, and the spool waits for the next tick.

use super::changed::Changed;
use super::{Parent, activate};
use crate::lock::LockReason;
use crate::log::{self, Event};
use crate::policy::Files;
use crate::proto::ctl::{ErrorCode, Reply};
use std::path::PathBuf;
use tokio::sync::oneshot;

/// A bundle being verified.
pub struct Job {
    source: &'static str,
    /// The `qkdctl policy load` request to answer when done.
    reply_to: Option<u64>,
    /// The spool entry to remove (accepted) or rename (rejected) when done.
    spool: Option<SpoolEntry>,
}

struct SpoolEntry {
    dir: PathBuf,
    name: String,
    is_dir: bool,
}

impl SpoolEntry {
    /// Removed after an activation, renamed `.rejected-<name>` otherwise
    /// (kept for inspection, not retried; an older rejection of the same
    /// name gives way). An entry that cannot leave the spool would be
    /// verified again every tick and hide every entry after it: it is
    /// remembered and passed over until it changes ([`Spool`]).
    fn done(&self, accepted: bool, spool: &mut Spool) {
        let path = self.dir.join(&self.name);
        let left = if accepted {
            remove_any(&path, self.is_dir)
        } else {
            // The name keeps within NAME_MAX with the prefix added.
            let mut keep = self.name.len().min(240);
            while !self.name.is_char_boundary(keep) {
                keep -= 1;
            }
            let to = self.dir.join(format!(".rejected-{}", &self.name[..keep]));
            std::fs::rename(&path, &to).or_else(|_| {
                let old_is_dir = std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir());
                let _ = remove_any(&to, old_is_dir);
                std::fs::rename(&path, &to)
            })
        };
        if let Err(e) = left {
            log::warn(format!(
                "incoming {}: cannot move it out of the spool ({e}); passed over until it changes",
                path.display()
            ));
            spool.stuck(&path);
        }
    }
}

fn remove_any(path: &std::path::Path, is_dir: bool) -> std::io::Result<()> {
    if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Spool entries that could not be moved out once verified: each by its
/// path, inode and change time, so a new push under the same name is read.
#[derive(Default)]
pub struct Spool {
    stuck: std::collections::BTreeSet<(PathBuf, u64, i64, i64)>,
}

impl Spool {
    fn identity(path: &std::path::Path) -> Option<(PathBuf, u64, i64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(path).ok()?;
        Some((path.to_path_buf(), md.ino(), md.ctime(), md.ctime_nsec()))
    }

    fn stuck(&mut self, path: &std::path::Path) {
        if let Some(id) = Spool::identity(path) {
            // Bounded: a spool is a handful of entries.
            if self.stuck.len() >= 256 {
                self.stuck.clear();
            }
            self.stuck.insert(id);
        }
    }

    fn passed_over(&self, path: &std::path::Path) -> bool {
        Spool::identity(path).is_some_and(|id| self.stuck.contains(&id))
    }
}

/// `qkdctl policy load`: starts the verification; the answer follows when
/// it is done (None now), or at once if the bundle cannot even be read.
pub fn policy_load(p: &mut Parent, b64: &str, id: u64) -> Option<Reply> {
    use base64::Engine as _;
    if b64.len() > crate::proto::ctl::MAX_REQUEST {
        return Some(Reply::error(ErrorCode::BadRequest, "bundle too large"));
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            "bundle is not valid base64",
        ));
    };
    let files = match crate::policy::read_bytes(&bytes) {
        Ok(f) => f,
        Err(e) => {
            rejected(&e, "qkdctl");
            return Some(Reply::error(ErrorCode::PolicyRejected, e.to_string()));
        }
    };
    if p.job.is_some() {
        return Some(Reply::error(
            ErrorCode::Refused,
            "another bundle is being activated; try again in a moment",
        ));
    }
    start(p, files, "qkdctl", Some(id), None).err()
}

fn rejected(e: &crate::policy::Reject, source: &str) {
    log::event(Event::PolicyRejected)
        .kv("reason", e.reason())
        .kv("source", source)
        .msg(e)
        .send();
}

/// Hands `files` to a worker thread; the loop picks the answer up from
/// `p.job_rx`.
fn start(
    p: &mut Parent,
    files: Files,
    source: &'static str,
    reply_to: Option<u64>,
    spool: Option<SpoolEntry>,
) -> Result<(), Reply> {
    let floor = match super::state::floor(Some(&p.links.state), &p.store) {
        Ok(f) => f,
        Err(e) => {
            return Err(Reply::error(
                ErrorCode::Failed,
                format!("policy store: {e}"),
            ));
        }
    };
    let job = activate::VerifyJob {
        files,
        keys: p.keys.clone(),
        floor,
        in_force: p.bundle.as_ref().map(|b| b.policy.serial),
        firewall: p.conf.firewall.clone(),
        state_dir: p.conf.daemon.state_dir.clone(),
        targets: super::targets(&p.conf),
        source: source.to_string(),
    };
    p.job_rx = Some(activate::verify_in_background(job));
    p.job = Some(Job {
        source,
        reply_to,
        spool,
    });
    Ok(())
}

/// The worker answered: activate (store, state file, links queued for
/// re-application) or refuse; answer the qkdctl that asked.
pub fn finish(
    p: &mut Parent,
    checked: Result<activate::Checked, oneshot::error::RecvError>,
) -> Changed {
    let mut out = Changed::none();
    let Some(job) = p.job.take() else { return out };
    let outcome = match checked {
        Ok(Ok(verified)) => activate::finish(
            verified,
            &p.store,
            &mut p.links.state,
            &p.links.state_path.clone(),
            job.source,
        ),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(crate::policy::Reject::Unreadable {
            what: "bundle".into(),
            msg: "the verification thread ended without an answer".into(),
        }),
    };
    let reply = match outcome {
        Ok(activate::Outcome::Unchanged(serial)) => {
            Reply::ok(format!("policy_unchanged serial={serial}"))
        }
        Ok(activate::Outcome::Loaded(b)) => {
            let serial = b.policy.serial;
            p.bundle = Some(*b);
            p.links.set_policy(p.bundle.as_ref());
            // A link held for `no-policy` has not been judged by the engine
            // yet (without a policy it checks no threshold or timer): it
            // stays held until the engine says it has judged every link
            // under this bundle (`policy_taken`). The others are
            // re-applied a few links per loop turn, engine reports first.
            let mut held = false;
            for (n, l) in &p.links.links {
                if l.parent.contains(LockReason::NoPolicy) {
                    held = true;
                } else {
                    p.reapply.push_back(n.clone());
                }
            }
            p.awaiting_judgement = held.then_some(serial);
            out.policy();
            Reply::ok(format!("policy_loaded serial={serial}"))
        }
        Err(e) => Reply::error(ErrorCode::PolicyRejected, e.to_string()),
    };
    if let Some(s) = &job.spool {
        s.done(matches!(reply, Reply::Ok { .. }), &mut p.spool);
    }
    if let Some(id) = job.reply_to {
        out.reply(id, reply);
    }
    out
}

/// The engine has judged every link under the bundle of `serial`
/// ([`crate::imsg::PolicyTaken`]): if it is the active one, the links held
/// for `no-policy` since before its activation are free of it and
/// re-applied. An answer for another serial (an older bundle's, or one the
/// engine never got) is not this one's.
pub(super) fn policy_taken(p: &mut Parent, serial: u64) -> Result<Changed, String> {
    let active = p.bundle.as_ref().map(|b| b.policy.serial);
    if active.is_none_or(|a| serial > a) {
        return Err(format!("policy_taken for serial {serial}, never sent"));
    }
    if p.awaiting_judgement != Some(serial) {
        return Ok(Changed::none());
    }
    p.awaiting_judgement = None;
    let mut out = Changed::none();
    // A bundle that expired while the engine judged it, with
    // `expired_action = "lockdown"`: no-policy stays (the next tick's
    // expiry check would lock the links again, after they opened).
    if p.bundle
        .as_ref()
        .is_some_and(|b| b.expiry_locks(crate::utc::now_unix()))
    {
        return Ok(out);
    }
    let names: Vec<String> = (p.links.links.iter())
        .filter(|(_, l)| l.parent.contains(LockReason::NoPolicy))
        .map(|(n, _)| n.clone())
        .collect();
    for n in &names {
        p.links.set_parent_reason(n, LockReason::NoPolicy, false);
        out.state(n);
    }
    p.reapply.extend(names);
    Ok(out)
}

impl Parent {
    /// Re-applies the next queued links with the active bundle's rulesets:
    /// as many as the firewall takes at once of those that only open or only
    /// lock again, or one other link alone
    /// ([`crate::parent::links::Links::turn`]).
    pub fn reapply_next(&mut self) -> Changed {
        let mut out = Changed::none();
        let fw = &self.links.fw;
        let (opens, relocks) = (fw.links_at_once(), fw.relocks_at_once());
        let n = (self.links).turn(opens, relocks, &self.reapply, true);
        let names: Vec<String> = self.reapply.drain(..n).collect();
        for (name, _) in self.links.reapply_many(names, self.bundle.as_ref()) {
            out.state(&name);
        }
        if self.reapply.is_empty() {
            out.all_states();
        }
        out
    }
}

/// The GitOps spool: every regular file (tar/tgz) or directory not starting
/// with "." is a bundle; the first one in name order is verified when no
/// other bundle is. A directory is read entry by entry without following
/// links; a file is opened O_NOFOLLOW|O_NONBLOCK and checked by fstat, so a
/// symlink, FIFO or device swapped in after the listing is refused.
pub fn scan_spool(p: &mut Parent) {
    if p.job.is_some() {
        return;
    }
    let Some(dir) = p.conf.policy.incoming.clone() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if p.spool.passed_over(&path) {
            continue;
        }
        let entry = SpoolEntry {
            dir: dir.clone(),
            name: name.clone(),
            is_dir: md.is_dir(),
        };
        let files = if md.is_dir() {
            crate::policy::read_dir(&path)
        } else {
            crate::policy::read_archive_file(&path, crate::policy::bundle::MAX_ARCHIVE)
                .and_then(|b| crate::policy::read_bytes(&b))
        };
        match files {
            Ok(f) => {
                if let Err(r) = start(p, f, "incoming", None, Some(entry)) {
                    log::event(Event::PolicyRejected)
                        .kv("reason", "store")
                        .kv("source", "incoming")
                        .msg(format!("{r:?}"))
                        .send();
                }
                return;
            }
            Err(e) => {
                rejected(&e, "incoming");
                entry.done(false, &mut p.spool);
            }
        }
    }
}
