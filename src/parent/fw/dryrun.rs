//! dry-run firewall (DESIGN §5), run by the privileged parent when the config
//! says `backend = "dry-run"`: for demos and for trying a bundle on a host
//! whose firewall must not change. It touches only `<state_dir>/dry-run/`,
//! where it writes, per link, exactly what the real backend would feed its
//! tool (`<link>.nft`: the nft script; `<link>.pf`: pfctl's stdin), and logs
//! the command lines it would run. Rulesets get the same checks as the real
//! backend's, except the tool's own parse.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Firewall, Observed, Readback};
use crate::lock::Enforcement;
use crate::ruleset::{Check, Flavor, LinkCheck, LinkTarget, check_names, nft, pf};
use crate::tool::FwError;

/// The dry-run backend.
pub struct DryRun {
    /// Which real backend's files and checks to imitate.
    flavor: Flavor,
    anchor: String,
    dir: PathBuf,
}

impl DryRun {
    pub fn new(flavor: Flavor, anchor: &str, state_dir: &Path) -> DryRun {
        DryRun {
            flavor,
            anchor: anchor.to_string(),
            dir: state_dir.join("dry-run"),
        }
    }

    /// Where the link's would-be rules are written.
    pub fn path(&self, link: &LinkTarget) -> PathBuf {
        self.dir.join(format!("{}.{}", link.name, self.extension()))
    }

    fn write(&self, link: &LinkTarget, what: &str, content: &str) -> Result<(), FwError> {
        let path = self.path(link);
        write_atomic(&path, content.as_bytes()).map_err(|e| {
            FwError::refused(format!(
                "dry-run: {what}: cannot write {}: {e}",
                path.display()
            ))
        })
    }

    /// Checks and renders the link's input; the commands it would run.
    fn render(
        &self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(String, Vec<String>), String> {
        match self.flavor {
            Flavor::Nft => {
                let stmts = nft::render_statements(link, ruleset)?;
                let script = match state {
                    Enforcement::Open => nft::flip_script(
                        &self.anchor,
                        link,
                        &nft::dispatch::LinkKeys::all(link),
                        &stmts,
                    ),
                    Enforcement::Lockdown => nft::lock_script(
                        &self.anchor,
                        link,
                        &nft::dispatch::LinkKeys::all(link),
                        &stmts,
                    ),
                };
                Ok((marked(state, &script), vec!["nft -f -".to_string()]))
            }
            Flavor::Pf => {
                pf::check_ruleset(ruleset)?;
                let mut cmds = vec![pfctl_line(&pf::load_args(&self.anchor, link, false))];
                if state == Enforcement::Lockdown {
                    cmds.extend(pf::kill_args(link, &[]).iter().map(|a| pfctl_line(a)));
                }
                let input = match state {
                    Enforcement::Open => pf::load_input(link, ruleset),
                    Enforcement::Lockdown => pf::lockdown_input(link, ruleset),
                };
                Ok((marked(state, &input), cmds))
            }
        }
    }

    fn cleared(&self, link: &LinkTarget) -> String {
        let body = match self.flavor {
            Flavor::Nft => nft::clear_script(&self.anchor, link),
            Flavor::Pf => pf::lockdown_input(link, ""),
        };
        marked(Enforcement::Lockdown, &body)
    }
}

/// The first line of every file written: the state it stands for, which
/// is all a dry run can read back.
const MARK: &str = "# qkdpfd dry-run state=";

fn marked(state: Enforcement, body: &str) -> String {
    format!("{MARK}{state}\n{body}")
}

fn pfctl_line(args: &[String]) -> String {
    format!("pfctl {}", args.join(" "))
}

impl LinkCheck for DryRun {
    fn extension(&self) -> &'static str {
        self.flavor.extension()
    }

    /// The checks before any tool runs, the same as for a real apply here.
    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String> {
        Check::render_only(self.flavor, &self.anchor).check(link, state, ruleset)
    }

    fn shared_check(&self) -> Option<Check> {
        Some(Check::render_only(self.flavor, &self.anchor))
    }
}

impl Firewall for DryRun {
    fn name(&self) -> &'static str {
        "dry-run"
    }

    fn init(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        for l in links {
            check_names(&self.anchor, l)?;
        }
        fs::create_dir_all(&self.dir).map_err(|e| {
            FwError::refused(format!(
                "dry-run: cannot create {}: {e}",
                self.dir.display()
            ))
        })?;
        if self.flavor == Flavor::Nft {
            crate::log::debug(format_args!(
                "dry-run: would run nft -f - <<'EOF'\n{}EOF",
                nft::skeleton(&self.anchor, links)
            ));
        }
        // Like an nft link chain created empty: a link never loaded is locked.
        for l in links.iter().filter(|l| !self.path(l).exists()) {
            self.write(l, "init", &self.cleared(l))?;
        }
        Ok(())
    }

    fn apply(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        check_names(&self.anchor, link)?;
        let (content, cmds) = self.render(link, state, ruleset).map_err(|e| {
            FwError::refused(format!("link {}: {state} ruleset refused: {e}", link.name))
        })?;
        self.write(link, state.as_str(), &content)?;
        for c in cmds {
            crate::log::info(format!(
                "dry-run: link {} {state}: would run {c} (input in {})",
                link.name,
                self.path(link).display()
            ));
        }
        Ok(())
    }

    fn clear(&mut self, link: &LinkTarget) -> Result<(), FwError> {
        check_names(&self.anchor, link)?;
        self.write(link, "clear", &self.cleared(link))?;
        crate::log::info(format!("dry-run: link {} cleared", link.name));
        Ok(())
    }

    fn observe(
        &mut self,
        links: &[LinkTarget],
        only: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, Readback>, FwError> {
        let mut out = std::collections::BTreeMap::new();
        // Each file is opened relative to the directory, opened once: a
        // path walk per link was a third of a 10,000-link tick. A missing
        // directory is every file missing.
        let dir = match fs::File::open(&self.dir) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(FwError::refused(format!(
                    "dry-run: cannot open {}: {e}",
                    self.dir.display()
                )));
            }
        };
        for link in super::covered(links, only) {
            check_names(&self.anchor, link)?;
            let read = match &dir {
                Some(d) => first_line(d, &format!("{}.{}", link.name, self.extension())),
                None => Err(std::io::ErrorKind::NotFound.into()),
            };
            let state = match read {
                Ok(t) => match t.strip_prefix(MARK) {
                    Some("open") => Observed::Open,
                    Some("lockdown") => Observed::Locked,
                    _ => Observed::unknown(format!("{} unmarked", self.path(link).display())),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Observed::unknown(format!("{} missing", self.path(link).display()))
                }
                Err(e) => {
                    return Err(FwError::refused(format!(
                        "dry-run: cannot read {}: {e}",
                        self.path(link).display()
                    )));
                }
            };
            out.insert(
                link.name.clone(),
                Readback {
                    state,
                    guarded: false,
                },
            );
        }
        Ok(out)
    }
}

/// The file's first line (its state mark), read alone: the reconcile tick
/// reads every link's file each second, and the rules after the mark are
/// the bulk of it. At most 64 bytes; a longer first line is no mark.
fn first_line(dir: &fs::File, name: &str) -> std::io::Result<String> {
    use nix::fcntl::{OFlag, openat};
    use std::io::Read;
    let mut buf = [0u8; 64];
    let mut have = 0;
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    let mut f = fs::File::from(fd);
    while have < buf.len() {
        match f.read(&mut buf[have..])? {
            0 => break,
            n => have += n,
        }
    }
    let text = String::from_utf8_lossy(&buf[..have]);
    Ok(text.split('\n').next().unwrap_or("").to_string())
}

/// The dry-run files hold no secret but are written as the state file is.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::file::write_atomic(path, data, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr() -> LinkTarget {
        LinkTarget {
            name: "dr".into(),
            wg_if: "wg0".into(),
            wg_port: 51820,
            rdomain: 0,
            udp_rdomain: 0,
            addrs4: vec!["198.51.100.2".parse().unwrap()],
            addrs6: vec!["2001:db8::2".parse().unwrap()],
            qber: "".into(),
        }
    }

    fn observed(fw: &mut DryRun) -> Observed {
        fw.observe(&[dr()], None).unwrap()["dr"].state.clone()
    }

    #[test]
    fn nft_flavor_writes_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut fw = DryRun::new(Flavor::Nft, "qkdpfd", tmp.path());
        fw.init(&[dr()]).unwrap();
        let path = tmp.path().join("dry-run/dr.nft");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "# qkdpfd dry-run state=lockdown\nadd chain inet qkdpfd link_dr\n\
             flush chain inet qkdpfd link_dr\n\
             add rule inet qkdpfd link_dr drop comment \"qkdpfd drop\"\n\
             add chain inet qkdpfd lock_dr\n\
             flush chain inet qkdpfd lock_dr\n\
             add rule inet qkdpfd lock_dr drop comment \"qkdpfd drop\"\n"
        );
        assert_eq!(observed(&mut fw), Observed::Locked);
        fw.apply(&dr(), Enforcement::Open, "ip saddr $peer4 accept\n")
            .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "# qkdpfd dry-run state=open\nflush chain inet qkdpfd link_dr\n\
             add rule inet qkdpfd link_dr counter comment \"qkdpfd open n=1\"\n\
             add rule inet qkdpfd link_dr ip saddr { 198.51.100.2 } accept\n\
             add element inet qkdpfd locked_4 { 198.51.100.2 . 51820 }\n\
             add element inet qkdpfd locked_6 { 2001:db8::2 . 51820 }\n\
             add element inet qkdpfd locked_if { \"wg0\" }\n\
             delete element inet qkdpfd locked_4 { 198.51.100.2 . 51820 }\n\
             delete element inet qkdpfd locked_6 { 2001:db8::2 . 51820 }\n\
             delete element inet qkdpfd locked_if { \"wg0\" }\n"
        );
        assert_eq!(observed(&mut fw), Observed::Open);
        // init again keeps the link's rules; a refused ruleset changes nothing.
        fw.init(&[dr()]).unwrap();
        assert!(fw.apply(&dr(), Enforcement::Lockdown, "jump x").is_err());
        assert_eq!(observed(&mut fw), Observed::Open);
        assert!(fw.check(&dr(), Enforcement::Open, "$nope").is_err());
        fw.clear(&dr()).unwrap();
        assert_eq!(observed(&mut fw), Observed::Locked);
        // Only a whole first line that is the mark counts.
        for text in [
            "# qkdpfd dry-run state=opened\n",
            "# qkdpfd dry-run state=open and then some more words on the one line\n",
            "# qkdpfd dry-run state=",
            "",
        ] {
            fs::write(&path, text).unwrap();
            assert!(
                matches!(observed(&mut fw), Observed::Unknown { .. }),
                "{text:?}"
            );
        }
        fs::write(&path, "# qkdpfd dry-run state=open").unwrap();
        assert_eq!(observed(&mut fw), Observed::Open, "no newline after it");
        fs::remove_file(&path).unwrap();
        assert!(matches!(observed(&mut fw), Observed::Unknown { .. }));
        // No directory at all: every file is missing, nothing is refused.
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
        match observed(&mut fw) {
            Observed::Unknown { why, .. } => assert!(why.ends_with("missing"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pf_flavor_writes_pfctl_input() {
        let tmp = tempfile::tempdir().unwrap();
        let mut fw = DryRun::new(Flavor::Pf, "qkdpfd", tmp.path());
        assert_eq!(fw.extension(), "pf");
        fw.init(&[dr()]).unwrap();
        assert_eq!(observed(&mut fw), Observed::Locked);
        fw.apply(&dr(), Enforcement::Open, "pass quick on $wg_if")
            .unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("dry-run/dr.pf")).unwrap(),
            "# qkdpfd dry-run state=open\n\
             table <qkd_peer> const { 198.51.100.2 2001:db8::2 }\npass quick on $wg_if\n"
        );
        assert_eq!(observed(&mut fw), Observed::Open);
        fw.clear(&dr()).unwrap();
        assert_eq!(observed(&mut fw), Observed::Locked);
    }
}
