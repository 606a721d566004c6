//! A bundle's ruleset checked for one link as the configured firewall would
//! load it (DESIGN §4: rulesets accepted by the backend for every link in
//! both states): rendered here, then parsed by the tool itself (`nft -c`,
//! `pfctl -n`), which changes nothing in the kernel. The parent's backends
//! answer their check with it, and `qkdctl policy verify` builds one from
//! the config alone, so that the control tool never needs a backend.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::{Flavor, LinkTarget, check_names, nft, pf};
use crate::conf::{FirewallBackend, FirewallConf};
use crate::lock::Enforcement;
use crate::policy::RulesetChecker;
use crate::tool::{TOOL_TIMEOUT, Tool};

/// Checks a bundle ruleset for one link: [`Check`], and every firewall
/// backend of the parent.
pub trait LinkCheck {
    /// Extension of the bundle's ruleset files: "nft" or "pf".
    fn extension(&self) -> &'static str;
    /// Renders for `link` and checks without applying (`nft -c`, `pfctl -n`).
    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String>;
    /// [`LinkCheck::check`] for every link of `links`; the first failing
    /// link and its message. A backend whose tool can check many links at
    /// once overrides it (one check per link costs a tool run each).
    fn check_links(
        &self,
        links: &[&LinkTarget],
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), (String, String)> {
        check_each(self, links, state, ruleset)
    }
    /// The [`Check`] this backend's checks amount to, owned, so that the
    /// bundle verifier can check both states side by side (each is a tool
    /// run of seconds at 10,000 links). None: one state after the other.
    fn shared_check(&self) -> Option<Check> {
        None
    }
}

/// One [`LinkCheck::check`] per link; the first failing link and its message.
fn check_each<C: LinkCheck + ?Sized>(
    c: &C,
    links: &[&LinkTarget],
    state: Enforcement,
    ruleset: &str,
) -> Result<(), (String, String)> {
    for l in links {
        c.check(l, state, ruleset)
            .map_err(|e| (l.name.clone(), e))?;
    }
    Ok(())
}

/// A ruleset qkdpfd's own checks refuse for `link`, before any tool runs.
fn refused(link: &LinkTarget, state: Enforcement, e: String) -> String {
    format!("link {}: {state} ruleset: {e}", link.name)
}

/// The check the configured firewall backend makes.
#[derive(Clone, Debug)]
pub struct Check {
    /// pf anchor root / nft table name.
    anchor: String,
    how: How,
}

#[derive(Clone, Debug)]
enum How {
    /// `nft -c -f -` at this path.
    Nft(PathBuf),
    /// `pfctl -n ... -f -` at this path.
    Pf(PathBuf),
    /// The dry-run backend: qkdpfd's own checks only, no tool.
    Render(Flavor),
}

impl Check {
    /// What `backend` in `[firewall]` checks with.
    pub fn new(conf: &FirewallConf) -> Check {
        match conf.backend {
            FirewallBackend::Pf => Check::pf(&conf.pfctl, &conf.anchor),
            FirewallBackend::Nftables => Check::nft(&conf.nft, &conf.anchor),
            FirewallBackend::DryRun => Check::render_only(Flavor::native(), &conf.anchor),
        }
    }

    pub fn nft(nft: &Path, table: &str) -> Check {
        Check {
            anchor: table.to_string(),
            how: How::Nft(nft.to_path_buf()),
        }
    }

    pub fn pf(pfctl: &Path, anchor: &str) -> Check {
        Check {
            anchor: anchor.to_string(),
            how: How::Pf(pfctl.to_path_buf()),
        }
    }

    /// The checks that run before any tool, as the dry-run backend makes them.
    pub fn render_only(flavor: Flavor, anchor: &str) -> Check {
        Check {
            anchor: anchor.to_string(),
            how: How::Render(flavor),
        }
    }
}

impl LinkCheck for Check {
    fn extension(&self) -> &'static str {
        match &self.how {
            How::Nft(_) => Flavor::Nft.extension(),
            How::Pf(_) => Flavor::Pf.extension(),
            How::Render(f) => f.extension(),
        }
    }

    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String> {
        check_names(&self.anchor, link).map_err(|e| e.to_string())?;
        let refused = |e| refused(link, state, e);
        let what = format!("check {state} rules for link {}", link.name);
        match &self.how {
            How::Nft(path) => {
                let stmts = nft::render_statements(link, ruleset).map_err(refused)?;
                nft_check(path, &self.anchor, &[(link, stmts)], state, &what)
            }
            How::Pf(path) => {
                pf::check_ruleset(ruleset).map_err(refused)?;
                let input = match state {
                    Enforcement::Open => pf::load_input(link, ruleset),
                    Enforcement::Lockdown => pf::lockdown_input(link, ruleset),
                };
                let args = pf::load_args(&self.anchor, link, true);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Tool::new(path, &args)
                    .run(&what, &input, TOOL_TIMEOUT)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            How::Render(Flavor::Nft) => nft::render_statements(link, ruleset)
                .map(drop)
                .map_err(refused),
            How::Render(Flavor::Pf) => pf::check_ruleset(ruleset).map_err(refused),
        }
    }

    /// nftables: the chains of one link per distinct rendered text in one
    /// `nft -c` script (a run per link took 0.1 s each at 10,000 links
    /// with the real table in the kernel); when it fails, halves are
    /// checked until one link is left, whose own check is the answer.
    fn check_links(
        &self,
        links: &[&LinkTarget],
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), (String, String)> {
        let How::Nft(path) = &self.how else {
            return check_each(self, links, state, ruleset);
        };
        // One link of each distinct text: statements cannot name a chain
        // or a set (`render_statements` refuses them), so whether the
        // kernel takes them depends only on the text and on the hooks that
        // reach the link's chain, which are the same for every link; the
        // skeleton made for those links has the real table's base chains.
        // A bundle without per-link macros is then one link's check (at
        // 10,000 links a run of every link's chains took 1-2 s), one with
        // them every link's, as before.
        let mut seen = HashSet::new();
        let mut rendered = Vec::new();
        for l in links {
            check_names(&self.anchor, l).map_err(|e| (l.name.clone(), e.to_string()))?;
            let stmts = nft::render_statements(l, ruleset)
                .map_err(|e| (l.name.clone(), refused(l, state, e)))?;
            if seen.insert(stmts.clone()) {
                rendered.push((*l, stmts));
            }
        }
        self.nft_bisect(path, &rendered, state)
    }

    fn shared_check(&self) -> Option<Check> {
        Some(self.clone())
    }
}

impl Check {
    /// [`LinkCheck::check_links`] for each `(state, ruleset)` of `sets`,
    /// each on a thread of its own; the place in `sets` of the first
    /// failing one, its link and message.
    pub fn check_sets(
        &self,
        links: &[&LinkTarget],
        sets: &[(Enforcement, &str)],
    ) -> Result<(), (usize, String, String)> {
        let results: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (sets.iter())
                .map(|(state, ruleset)| s.spawn(move || self.check_links(links, *state, ruleset)))
                .collect();
            (threads.into_iter())
                .map(|t| {
                    t.join().unwrap_or_else(|_| {
                        Err(("-".to_string(), "the check's thread panicked".to_string()))
                    })
                })
                .collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            r.map_err(|(l, m)| (i, l, m))?;
        }
        Ok(())
    }

    /// Checks `rendered` in one run; on a failure, finds a failing link by
    /// halves (2·log2(n) more runs at most), whose own check is the answer.
    fn nft_bisect(
        &self,
        path: &Path,
        rendered: &[(&LinkTarget, Vec<String>)],
        state: Enforcement,
    ) -> Result<(), (String, String)> {
        let what = match rendered {
            [(l, _)] => format!("check {state} rules for link {}", l.name),
            _ => format!("check {state} rules for {} links", rendered.len()),
        };
        let Err(whole) = nft_check(path, &self.anchor, rendered, state, &what) else {
            return Ok(());
        };
        let first = rendered.first().map_or("-".into(), |(l, _)| l.name.clone());
        if rendered.len() == 1 {
            return Err((first, whole));
        }
        let (a, b) = rendered.split_at(rendered.len() / 2);
        self.nft_bisect(path, a, state)?;
        self.nft_bisect(path, b, state)?;
        // Each half passes alone: say so rather than pass the whole.
        Err((first, format!("{whole} (each half passes alone)")))
    }
}

/// `nft -c` of the skeleton for `links` and each link's chain loaded as
/// `state` loads it, in one script.
fn nft_check(
    path: &Path,
    table: &str,
    links: &[(&LinkTarget, Vec<String>)],
    state: Enforcement,
    what: &str,
) -> Result<(), String> {
    let targets: Vec<LinkTarget> = links.iter().map(|(l, _)| (*l).clone()).collect();
    let mut script = nft::skeleton(table, &targets);
    for (link, stmts) in links {
        let keys = nft::dispatch::LinkKeys::all(link);
        script.push_str(&match state {
            Enforcement::Open => nft::flip_script(table, link, &keys, stmts),
            Enforcement::Lockdown => nft::lock_script(table, link, &keys, stmts),
        });
    }
    // nft -c still asks the kernel; without root a private user and
    // network namespace gives it one to ask, touching nothing real.
    let tool = if nix::unistd::geteuid().is_root() {
        Tool::new(path, &["-c", "-f", "-"])
    } else {
        let nft = path.display().to_string();
        Tool::new(Path::new("unshare"), &["-rn", &nft, "-c", "-f", "-"])
    };
    // A big script takes nft a while (about 2 s at 10,000 links).
    tool.run(what, &script, crate::tool::timeout_for(links.len()))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Adapts a [`LinkCheck`] to the bundle verifier, which names links: each
/// configured link's ruleset is checked as it would be loaded for it.
pub struct Checker<'a, C: ?Sized> {
    /// The parent's firewall backend, or a [`Check`] built from the config.
    pub fw: &'a C,
    pub targets: &'a BTreeMap<String, LinkTarget>,
}

impl<C: LinkCheck + ?Sized> RulesetChecker for Checker<'_, C> {
    fn extension(&self) -> &'static str {
        self.fw.extension()
    }
    fn check(&self, link: &str, state: Enforcement, ruleset: &str) -> Result<(), String> {
        let t = self
            .targets
            .get(link)
            .ok_or_else(|| format!("unknown link {link}"))?;
        self.fw.check(t, state, ruleset)
    }
    fn check_links(
        &self,
        links: &[String],
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), (String, String)> {
        let targets = self.targets_of(links)?;
        self.fw.check_links(&targets, state, ruleset)
    }
    fn check_sets(
        &self,
        links: &[String],
        sets: &[(Enforcement, &str)],
    ) -> Result<(), (usize, String, String)> {
        let Some(check) = self.fw.shared_check() else {
            return crate::policy::verify::sets_in_turn(self, links, sets);
        };
        let targets = self.targets_of(links).map_err(|(l, m)| (0, l, m))?;
        check.check_sets(&targets, sets)
    }
}

impl<C: ?Sized> Checker<'_, C> {
    fn targets_of(&self, links: &[String]) -> Result<Vec<&LinkTarget>, (String, String)> {
        let mut targets = Vec::with_capacity(links.len());
        for link in links {
            let t = (self.targets.get(link))
                .ok_or_else(|| (link.clone(), format!("unknown link {link}")))?;
            targets.push(t);
        }
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr() -> LinkTarget {
        LinkTarget::sample()
    }

    #[test]
    fn render_only_checks_without_a_tool() {
        let nft = Check::render_only(Flavor::Nft, "qkdpfd");
        assert_eq!(nft.extension(), "nft");
        nft.check(&dr(), Enforcement::Open, "ip saddr $peer4 accept\n")
            .unwrap();
        let e = nft
            .check(&dr(), Enforcement::Lockdown, "accept\njump x\n")
            .unwrap_err();
        assert!(e.starts_with("link dr: lockdown ruleset: line 2: "), "{e}");
        let pf = Check::render_only(Flavor::Pf, "qkdpfd");
        assert_eq!(pf.extension(), "pf");
        pf.check(&dr(), Enforcement::Open, "pass quick on $wg_if\n")
            .unwrap();
        assert!(pf.check(&dr(), Enforcement::Open, "pass to $x").is_err());
        let bad = Check::render_only(Flavor::Nft, "Bad;");
        assert!(bad.check(&dr(), Enforcement::Open, "").is_err());
    }

    #[test]
    fn checker_refuses_unknown_links() {
        let targets = BTreeMap::from([("dr".to_string(), dr())]);
        let check = Check::render_only(Flavor::Pf, "qkdpfd");
        let c = Checker {
            fw: &check,
            targets: &targets,
        };
        assert_eq!(RulesetChecker::extension(&c), "pf");
        assert!(RulesetChecker::check(&c, "dr", Enforcement::Open, "pass").is_ok());
        let e = RulesetChecker::check(&c, "lab", Enforcement::Open, "pass").unwrap_err();
        assert_eq!(e, "unknown link lab");
    }

    /// An executable `nft` in `dir` running the shell script `body`.
    fn stand_in_nft(dir: &std::path::Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.join("nft");
        std::fs::write(&fake, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        fake
    }

    /// A stand-in nft that refuses any script loading `link_l5`'s chain
    /// and counts its runs: the halving must find l5 among 16 links (each
    /// its own text: the macro names its interface) in a handful of runs.
    /// (Real nft's check of many links: tests/fw_nft_batch.rs.)
    #[test]
    fn a_failing_link_is_found_by_halves() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let fake = stand_in_nft(
            dir.path(),
            &format!(
                "echo run >> {}\nif grep -q 'link_l5 counter'; then \
                 echo 'Error: l5 is bad' >&2; exit 1; fi\n",
                runs.display()
            ),
        );
        let links = sixteen();
        let refs: Vec<&LinkTarget> = links.iter().collect();
        let check = Check::nft(&fake, "qkdpfd");
        let count = || std::fs::read_to_string(&runs).unwrap().lines().count();
        let text = "iifname $wg_if accept\n";
        let (link, e) = check
            .check_links(&refs, Enforcement::Open, text)
            .unwrap_err();
        assert_eq!(link, "l5");
        assert!(
            e.contains("check open rules for link l5") && e.contains("l5 is bad"),
            "{e}"
        );
        // 1 + 2 per halving (both halves of 16, 8, 4, 2) at most.
        assert!(count() <= 9, "{} runs", count());
        // Without l5: one run.
        std::fs::remove_file(&runs).unwrap();
        let without: Vec<&LinkTarget> = refs.iter().copied().filter(|l| l.name != "l5").collect();
        check
            .check_links(&without, Enforcement::Open, text)
            .unwrap();
        assert_eq!(count(), 1);
    }

    /// Links l0..l15, each on its own interface, half of them (odd) with
    /// another far port.
    fn sixteen() -> Vec<LinkTarget> {
        (0..16)
            .map(|i| LinkTarget {
                name: format!("l{i}"),
                wg_if: format!("wg{i}"),
                wg_port: 51820 + i % 2,
                ..dr()
            })
            .collect()
    }

    /// Whether a text passes is the same for every link that renders it
    /// alike: one link of each distinct text is checked, in one run whose
    /// skeleton is made for those links; a text with a per-link macro is
    /// every link's.
    #[test]
    fn one_link_of_each_distinct_text_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        let fake = stand_in_nft(dir.path(), &format!("cat > {}\n", script.display()));
        let links = sixteen();
        let refs: Vec<&LinkTarget> = links.iter().collect();
        let check = Check::nft(&fake, "qkdpfd");
        let checked = |text: &str| {
            check.check_links(&refs, Enforcement::Open, text).unwrap();
            let s = std::fs::read_to_string(&script).unwrap();
            let names: Vec<String> = (links.iter())
                .filter(|l| s.contains(&format!("add rule inet qkdpfd link_{} ", l.name)))
                .map(|l| l.name.clone())
                .collect();
            let chains = s.matches("add chain inet qkdpfd link_").count();
            assert_eq!(chains, names.len(), "{text}: the skeleton's links");
            names
        };
        assert_eq!(checked("accept\n"), ["l0"]);
        assert_eq!(checked("udp dport $wg_port accept\n"), ["l0", "l1"]);
        assert_eq!(checked("iifname $wg_if accept\n").len(), 16);
    }

    /// Both states' checks run side by side (each is seconds of `nft` at
    /// 10,000 links): a stand-in nft that takes a second logs both starts
    /// before either end. The first failing set in order is the answer.
    #[test]
    fn both_states_are_checked_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let fake = stand_in_nft(
            dir.path(),
            &format!(
                "cat >/dev/null\necho start >> {0}\nsleep 1\necho end >> {0}\n",
                log.display()
            ),
        );
        let links = [dr()];
        let refs: Vec<&LinkTarget> = links.iter().collect();
        let sets = [
            (Enforcement::Open, "accept\n"),
            (Enforcement::Lockdown, "drop\n"),
        ];
        Check::nft(&fake, "qkdpfd")
            .check_sets(&refs, &sets)
            .unwrap();
        let order = std::fs::read_to_string(&log).unwrap();
        assert_eq!(order, "start\nstart\nend\nend\n");

        let check = Check::render_only(Flavor::Nft, "qkdpfd");
        let bad_lock = [
            (Enforcement::Open, "accept\n"),
            (Enforcement::Lockdown, "jump x\n"),
        ];
        let (i, link, e) = check.check_sets(&refs, &bad_lock).unwrap_err();
        assert_eq!((i, link.as_str()), (1, "dr"));
        assert!(e.contains("lockdown ruleset"), "{e}");
        let both_bad = [
            (Enforcement::Open, "goto y\n"),
            (Enforcement::Lockdown, "jump x\n"),
        ];
        let (i, _, e) = check.check_sets(&refs, &both_bad).unwrap_err();
        assert_eq!(i, 0);
        assert!(e.contains("open ruleset"), "{e}");
    }
}
