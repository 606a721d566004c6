//! The pf guardian (src/parent/guardian.rs; fail-closed issue, item 2):
//! pf has no dead-man switch in the kernel, so a third process locks every
//! link when the parent dies unclean. pf cannot run here: `pfctl` is a
//! recorder that keeps each anchor's last load in a file and lists it back
//! (a kernel in files), so what the guardian made pf hold is read back as
//! the daemon reads pf, and every argv is on record.
//!
//! SIGKILL of the parent with a link open: the guardian loads qkdpfd's
//! labelled block rules into the link's anchor and kills its states. A
//! clean stop (SIGTERM, `on_stop = "keep"`): the guardian goes and the
//! link keeps its open rules. A stop whose own lockdown pf refused leaves
//! the guardian to lock.
#![cfg(target_os = "linux")]

mod common;

use common::bundle::{TestKeys, make_bundle, sign};
use common::gateway::{BIN_QKDCTL, BIN_QKDPFD, policy, require_root};
use nix::sys::signal::Signal;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OPEN_PF: &str = "pass quick on $wg_if\n";
const LOCKDOWN_PF: &str = "block drop quick on $wg_if\n";

struct Daemon {
    work: tempfile::TempDir,
    keys: TestKeys,
    child: Option<Child>,
}

impl Daemon {
    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// The recorder's "kernel": the state directory (writable under the
    /// parent's landlock ruleset), where the calls are logged too.
    fn kernel(&self) -> PathBuf {
        self.path("state")
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.kernel().join("pfctl.calls")).unwrap_or_default()
    }

    fn anchor(&self) -> String {
        fs::read_to_string(self.kernel().join("anchor-dr")).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("qkdpfd.log")).unwrap_or_default()
    }

    /// `qkdpfd FLAG -f` on this daemon's config, run to its end: its exit
    /// code and what it wrote on stderr.
    fn qkdpfd(&self, flag: &str) -> (Option<i32>, String) {
        let o = Command::new(BIN_QKDPFD)
            .args([flag, "-f"])
            .arg(self.path("qkdpfd.conf"))
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into())
    }

    /// A start that failed (its stderr `err`) locked link dr as `-L` does.
    fn assert_locked_by_a_failed_start(&self, code: Option<i32>, err: &str) {
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("link dr: locked"), "{err}");
        assert!(!self.anchor().contains("pass quick"), "{}", self.anchor());
        assert!(
            self.anchor().contains("qkdpfd-lockdown"),
            "{}",
            self.anchor()
        );
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN_QKDCTL)
            .arg("-s")
            .arg(self.path("qkdpfd.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    fn wait(&self, what: &str, limit: Duration, ok: impl Fn(&Daemon) -> bool) {
        let t = Instant::now();
        while !ok(self) {
            assert!(
                t.elapsed() < limit,
                "{what}: not after {limit:?}\nlog:\n{}\ncalls:\n{}",
                self.log(),
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `pfctl` that the parent may run under its landlock ruleset: a shell
/// copied beside it (only the tool's directory is executable) and shell
/// built-ins only (no mv, no cat).
fn recorder(bin: &Path, kernel: &Path) -> PathBuf {
    fs::create_dir_all(bin).unwrap();
    fs::set_permissions(bin, fs::Permissions::from_mode(0o755)).unwrap();
    let sh = ["/usr/bin/dash", "/bin/dash", "/bin/sh"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    fs::copy(sh, bin.join("sh")).unwrap();
    let k = kernel.display();
    let script = format!(
        r#"#!{bin}/sh
printf '%s\n' "$*" >> {k}/pfctl.calls
anchor=
parse=
while [ $# -gt 0 ]; do
	case "$1" in
	-a) path=$2; anchor=${{2##*/}}; shift ;;
	-n) parse=1 ;;
	-s) what=$2; shift ;;
	-f) load=1 ;;
	esac
	shift
done
if [ -n "$load" ]; then
	# A pf that refuses every load from now on (the test's switch).
	if [ -e {k}/refuse ] && [ -z "$parse" ]; then
		while IFS= read -r l; do :; done
		echo 'pfctl: refused' >&2
		exit 1
	fi
	if [ -n "$parse" ] || [ -z "$anchor" ]; then
		while IFS= read -r l; do :; done
	elif [ "$path" = "$anchor" ]; then
		# The root, as pfctl loads brace anchors: each `anchor "NAME" {{`
		# block becomes anchor NAME; the macro lines around them are not
		# rules of any link.
		name=
		while IFS= read -r l; do
			case "$l" in
			'anchor "'*'" {{') name=${{l#anchor \"}}; name=${{name%%\"*}}; : > {k}/anchor-$name ;;
			'}}') name= ;;
			*) [ -z "$name" ] || printf '%s\n' "$l" >> {k}/anchor-$name ;;
			esac
		done
	else
		: > {k}/anchor-$anchor
		while IFS= read -r l; do printf '%s\n' "$l" >> {k}/anchor-$anchor; done
	fi
	exit 0
fi
case "$what" in
info) echo 'Status: Enabled for 0 days 00:00:01' ;;
rules)
	if [ -z "$anchor" ]; then
		printf 'anchor "qkdpfd/*" all\nblock drop quick on wg0 all\n'
	elif [ -e {k}/anchor-$anchor ]; then
		while IFS= read -r l; do printf '%s\n' "$l"; done < {k}/anchor-$anchor
	else
		echo 'pfctl: Anchor does not exist' >&2
	fi ;;
esac
exit 0
"#,
        bin = bin.display()
    );
    let p = bin.join("pfctl");
    fs::write(&p, script).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A running qkdpfd on pf (the recorder) with link `dr` open.
fn open_daemon(on_stop: &str) -> Option<Daemon> {
    if !require_root() {
        return None;
    }
    let keys = TestKeys::signify()?;
    let work = tempfile::Builder::new()
        .prefix("qkdguard")
        .tempdir()
        .unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let w = work.path();
    fs::create_dir_all(w.join("state")).unwrap();
    let pfctl = recorder(&w.join("fw-bin"), &w.join("state"));
    let conf = format!(
        "[daemon]\nuser = \"nobody\"\nstate_dir = \"{w}/state\"\nsocket = \"{w}/qkdpfd.sock\"\n\
         on_stop = \"{on_stop}\"\n\n\
         [policy]\npubkeys = [\"{pk}\"]\ndir = \"{w}/state/policy\"\n\n\
         [firewall]\nbackend = \"pf\"\npfctl = \"{pfctl}\"\n\n[wireguard]\nbackend = \"dry-run\"\n\n\
         [qber.sim]\ndriver = \"sim\"\npoll = \"200ms\"\nseed = 3\n\n\
         [link.dr]\nqber = \"sim\"\nqber_id = \"t\"\nwg_interface = \"wg0\"\nwg_port = 51820\n\
         addresses = [\"192.0.2.2\"]\n",
        w = w.display(),
        pk = keys.pubkey.display(),
        pfctl = pfctl.display(),
    );
    fs::write(w.join("qkdpfd.conf"), conf).unwrap();
    let log = fs::File::create(w.join("qkdpfd.log")).unwrap();
    let child = Command::new(BIN_QKDPFD)
        .args(["-d", "-f"])
        .arg(w.join("qkdpfd.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = Daemon {
        work,
        keys,
        child: Some(child),
    };
    d.wait("start", Duration::from_secs(10), |d| {
        d.ctl(&["status"]).status.success()
    });
    let dir = d.path("bundle");
    make_bundle(
        &dir,
        &[
            ("policy.toml", &policy(1, true, "")),
            ("anchors/open.pf", OPEN_PF),
            ("anchors/lockdown.pf", LOCKDOWN_PF),
        ],
    );
    sign(&dir, &d.keys);
    let o = d.ctl(&["policy", "load", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}\n{}", d.log());
    d.wait("open", Duration::from_secs(15), |d| {
        d.anchor().contains("pass quick on $wg_if")
            && String::from_utf8_lossy(&d.ctl(&["show", "link", "dr"]).stdout).contains("open")
    });
    Some(d)
}

/// The guardian's pid: the parent's child running `-P guardian`.
fn guardian_pid(parent: u32) -> u32 {
    let kids = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    kids.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|k| {
            fs::read(format!("/proc/{k}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("guardian"))
                .unwrap_or(false)
        })
        .expect("no guardian child")
}

/// Signals the parent and waits for its end.
fn end(parent: &mut Child, sig: Signal) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(parent.id() as i32), sig).unwrap();
    parent.wait().unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_killed_parent_is_locked_by_the_guardian() {
    let Some(mut d) = open_daemon("keep") else {
        return;
    };
    let mut child = d.child.take().unwrap();
    let parent = child.id();
    let guardian = guardian_pid(parent);
    let before = d.calls().lines().count();
    let _ = end(&mut child, Signal::SIGKILL);
    let t = Instant::now();
    d.wait("guardian locks", Duration::from_secs(5), |d| {
        d.anchor().matches("label \"qkdpfd-lockdown\"").count() == 3
    });
    let took = t.elapsed();
    d.wait("guardian exits", Duration::from_secs(5), |_| {
        !alive(guardian)
    });
    let calls: Vec<String> = d.calls().lines().skip(before).map(String::from).collect();
    // One load of every link's anchor (qkdpfd's block rules, as brace
    // anchors under the root), then the state kills (both families, the
    // interface's states); the read-back shows it, so no link is loaded
    // on its own.
    assert!(calls.iter().any(|c| c == "-a qkdpfd -f -"), "{calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("-a qkdpfd/dr ") && c.ends_with("-f -")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.contains("-k 0.0.0.0/0")),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| c.contains("-i wg0 -k")), "{calls:?}");
    let log = d.log();
    assert!(log.contains("event=guardian_lockdown"), "{log}");
    assert!(!log.contains("guardian_lockdown_failed"), "{log}");
    eprintln!("guardian: anchor locked {took:?} after the parent's SIGKILL");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_clean_stop_sends_the_guardian_away_without_touching_pf() {
    let Some(mut d) = open_daemon("keep") else {
        return;
    };
    let mut child = d.child.take().unwrap();
    let parent = child.id();
    let guardian = guardian_pid(parent);
    let status = end(&mut child, Signal::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", d.log());
    d.wait("guardian exits", Duration::from_secs(5), |_| {
        !alive(guardian)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        d.anchor().contains("pass quick on $wg_if"),
        "{}",
        d.anchor()
    );
    assert!(!d.anchor().contains("qkdpfd-lockdown"), "{}", d.anchor());
    assert!(!d.log().contains("guardian_lockdown"), "{}", d.log());
}

/// A stop that locks (`on_stop = "lockdown"`) but whose lockdown pf
/// refuses does not send the guardian away: the parent's exit leaves it to
/// lock the links on its own.
#[test]
fn a_lockdown_that_failed_at_the_stop_is_left_to_the_guardian() {
    let Some(mut d) = open_daemon("lockdown") else {
        return;
    };
    let mut child = d.child.take().unwrap();
    let parent = child.id();
    let guardian = guardian_pid(parent);
    fs::write(d.path("state/refuse"), "").unwrap();
    let _ = end(&mut child, Signal::SIGTERM);
    d.wait("the guardian tries", Duration::from_secs(10), |d| {
        d.log().contains("event=guardian_lockdown")
    });
    d.wait("guardian exits", Duration::from_secs(10), |_| {
        !alive(guardian)
    });
    let log = d.log();
    assert!(log.contains("event=lockdown_failed"), "{log}");
}

/// A restart after a stop that kept the links open (pf has no dead-man
/// switch) fails on a state file it cannot read: it locks every link before
/// it exits, and says how to start again.
#[test]
fn a_failed_start_locks_the_links_a_kept_stop_left_open() {
    let Some(mut d) = open_daemon("keep") else {
        return;
    };
    let mut child = d.child.take().unwrap();
    assert!(end(&mut child, Signal::SIGTERM).success());
    assert!(
        d.anchor().contains("pass quick on $wg_if"),
        "{}",
        d.anchor()
    );
    fs::write(d.path("state/state"), "{ not json").unwrap();
    let (code, err) = d.qkdpfd("-d");
    assert!(err.contains("move it and its .journal aside"), "{err}");
    d.assert_locked_by_a_failed_start(code, &err);
}

/// The same after a failure of the start's last steps, before the engine
/// runs (here the control socket's group is unknown): `-n` refuses the
/// config, and the start locks every link before it exits.
#[test]
fn a_start_that_cannot_open_its_socket_locks_the_links() {
    let Some(mut d) = open_daemon("keep") else {
        return;
    };
    let mut child = d.child.take().unwrap();
    assert!(end(&mut child, Signal::SIGTERM).success());
    assert!(d.anchor().contains("pass quick"), "{}", d.anchor());
    let conf = fs::read_to_string(d.path("qkdpfd.conf")).unwrap();
    let conf = conf.replace(
        "[daemon]\n",
        "[daemon]\nsocket_group = \"qkd_no_such_group\"\n",
    );
    fs::write(d.path("qkdpfd.conf"), conf).unwrap();
    let (code, err) = d.qkdpfd("-n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown group qkd_no_such_group"), "{err}");
    assert!(d.anchor().contains("pass quick"), "-n changed the firewall");
    let (code, err) = d.qkdpfd("-d");
    assert!(err.contains("unknown group qkd_no_such_group"), "{err}");
    d.assert_locked_by_a_failed_start(code, &err);
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
