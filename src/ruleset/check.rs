//! A bundle's ruleset checked for one link as the configured firewall would
//! load it (DESIGN §4: rulesets accepted by the backend for every link in
//! both states): rendered here, then parsed by the tool itself (`nft -c`,
//! `pfctl -n`), which changes nothing in the kernel. The parent's backends
//! answer their check with it, and `qkdctl policy verify` builds one from
//! the config alone, so that the control tool never needs a backend.

use std::collections::BTreeMap;
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
        let refused = |e: String| format!("link {}: {state} ruleset: {e}", link.name);
        let what = format!("check {state} rules for link {}", link.name);
        match &self.how {
            How::Nft(path) => {
                let stmts = nft::render_statements(link, ruleset).map_err(refused)?;
                let table = &self.anchor;
                let mut script = nft::skeleton(table, std::slice::from_ref(link));
                match state {
                    Enforcement::Open => script.push_str(&nft::flip_script(
                        table,
                        link,
                        &nft::dispatch::LinkKeys::all(link),
                        &stmts,
                    )),
                    Enforcement::Lockdown => script.push_str(&nft::lock_script(
                        table,
                        link,
                        &nft::dispatch::LinkKeys::all(link),
                        &stmts,
                    )),
                }
                // nft -c still asks the kernel; without root a private user and
                // network namespace gives it one to ask, touching nothing real.
                let tool = if nix::unistd::geteuid().is_root() {
                    Tool::new(path, &["-c", "-f", "-"])
                } else {
                    let nft = path.display().to_string();
                    Tool::new(Path::new("unshare"), &["-rn", &nft, "-c", "-f", "-"])
                };
                tool.run(&what, &script, TOOL_TIMEOUT)
                    .map(drop)
                    .map_err(|e| e.to_string())
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
}
