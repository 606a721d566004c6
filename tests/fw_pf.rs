//! The pf backend, by the exact pfctl argv and stdin it produces (DESIGN §10):
//! `FirewallConf::pfctl` points at a recording stand-in that writes each
//! call's arguments (one per line) and stdin to numbered files.

use std::fs;
use std::path::{Path, PathBuf};

use qkdpfd::conf::{FirewallBackend, FirewallConf};
use qkdpfd::lock::Enforcement;
use qkdpfd::parent::fw::{self, Firewall};
use qkdpfd::ruleset::LinkTarget;

const RECORDER: &str = r#"#!/bin/sh
d='@DIR@'
n=$(cat "$d/count" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$d/count"
for a in "$@"; do printf '%s\n' "$a"; done > "$d/$n.argv"
cat > "$d/$n.stdin"
k=$(printf '%s_' "$@" | tr '/ ' '__')
[ -f "$d/out.$k" ] && cat "$d/out.$k"
[ -f "$d/stdout" ] && cat "$d/stdout"
[ -f "$d/stderr" ] && cat "$d/stderr" >&2
[ -f "$d/err.$k" ] && { cat "$d/err.$k" >&2; exit 1; }
if [ -f "$d/fail_on" ] && [ "$*" = "$(cat "$d/fail_on")" ]; then
    echo "pfctl: DIOCKILLSTATES: Operation not permitted" >&2; exit 1
fi
exit "$(cat "$d/exit" 2>/dev/null || echo 0)"
"#;

struct Rec {
    dir: tempfile::TempDir,
    fw: Box<dyn Firewall>,
}

impl Rec {
    fn new() -> Rec {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pfctl = dir.path().join("pfctl");
        fs::write(
            &pfctl,
            RECORDER.replace("@DIR@", &dir.path().display().to_string()),
        )
        .unwrap();
        fs::set_permissions(&pfctl, fs::Permissions::from_mode(0o755)).unwrap();
        let conf = FirewallConf {
            backend: FirewallBackend::Pf,
            anchor: "qkdpfd".into(),
            pfctl,
            nft: PathBuf::from("/usr/sbin/nft"),
            handshakes: false,
        };
        let fw = fw::new(&conf, dir.path());
        Rec { dir, fw }
    }

    fn set(&self, file: &str, text: &str) {
        fs::write(self.dir.path().join(file), text).unwrap();
    }

    fn unset(&self, file: &str) {
        let _ = fs::remove_file(self.dir.path().join(file));
    }

    /// Every call so far: (argv without argv[0], stdin). Clears the record.
    fn take(&self) -> Vec<(Vec<String>, String)> {
        let d = self.dir.path();
        let n: usize = fs::read_to_string(d.join("count"))
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(0);
        let calls = (1..=n)
            .map(|i| {
                let argv = read(d, &format!("{i}.argv"));
                (
                    argv.lines().map(String::from).collect(),
                    read(d, &format!("{i}.stdin")),
                )
            })
            .collect();
        let _ = fs::remove_file(d.join("count"));
        calls
    }
}

fn read(d: &Path, f: &str) -> String {
    fs::read_to_string(d.join(f)).unwrap()
}

fn args(s: &str) -> Vec<String> {
    s.split('|').map(String::from).collect()
}

/// A second link on dr's interface, with an IPv4 peer of its own only.
fn spoke() -> LinkTarget {
    let mut spoke = dr();
    spoke.name = "spoke".into();
    spoke.addrs4 = vec!["198.51.100.7".parse().unwrap()];
    spoke.addrs6.clear();
    spoke
}

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

/// `dr`'s state kills, in order: each address both ways, then wg0's.
const DR_KILLS: [&str; 6] = [
    "-k|198.51.100.2",
    "-k|0.0.0.0/0|-k|198.51.100.2",
    "-k|2001:db8::2",
    "-k|::/0|-k|2001:db8::2",
    "-i|wg0|-k|0.0.0.0/0",
    "-i|wg0|-k|::/0",
];

const OPEN: &str = "pass quick on $wg_if keep state (if-bound)\n";

/// qkdpfd's own labelled block rules, after every lockdown ruleset.
const LOCK_RULES: &str = "block drop quick proto udp to <qkd_peer> port $wg_port label \"qkdpfd-lockdown\"\n\
block drop quick proto udp from <qkd_peer> port $wg_port label \"qkdpfd-lockdown\"\n\
block drop quick on $wg_if label \"qkdpfd-lockdown\"\n";

#[test]
fn init_needs_pf_enabled() {
    let mut r = Rec::new();
    r.set(
        "stdout",
        "Status: Enabled for 0 days 00:10:00           Debug: err\n",
    );
    r.fw.init(&[dr()]).unwrap();
    assert_eq!(r.take(), [(args("-s|info"), String::new())]);
    r.set(
        "stdout",
        "Status: Disabled for 0 days 00:10:00          Debug: err\n",
    );
    let e = r.fw.init(&[dr()]).unwrap_err();
    assert!(e.to_string().starts_with("pf is not enabled"), "{e}");
    r.take();
    // A link name that would break out of its anchor is refused before pfctl runs.
    let mut bad = dr();
    bad.name = "dr/../hq".into();
    assert!(r.fw.init(&[bad]).is_err());
    assert!(r.take().is_empty());
}

#[test]
fn apply_open_is_one_load_with_table_and_macros() {
    let mut r = Rec::new();
    r.fw.apply(&dr(), Enforcement::Open, OPEN).unwrap();
    assert_eq!(
        r.take(),
        [(
            args(
                "-a|qkdpfd/dr|-D|link=dr|-D|wg_if=wg0|-D|wg_port=51820\
                 |-D|peer4=198.51.100.2|-D|peer6=2001:db8::2|-f|-"
            ),
            "table <qkd_peer> const { 198.51.100.2 2001:db8::2 }\n\
             pass quick on $wg_if keep state (if-bound)\n"
                .to_string()
        )]
    );
}

#[test]
fn apply_lockdown_loads_then_kills_states_both_ways() {
    let mut r = Rec::new();
    let mut link = dr();
    link.addrs4.push("198.51.100.3".parse().unwrap());
    r.fw.apply(&link, Enforcement::Lockdown, "block drop quick on $wg_if")
        .unwrap();
    let calls = r.take();
    let argvs: Vec<Vec<String>> = calls.iter().map(|c| c.0.clone()).collect();
    assert_eq!(
        argvs,
        [
            args(
                "-a|qkdpfd/dr|-D|link=dr|-D|wg_if=wg0|-D|wg_port=51820\
                 |-D|peer4={ 198.51.100.2 198.51.100.3 }|-D|peer6=2001:db8::2|-f|-"
            ),
            args("-k|198.51.100.2"),
            args("-k|0.0.0.0/0|-k|198.51.100.2"),
            args("-k|198.51.100.3"),
            args("-k|0.0.0.0/0|-k|198.51.100.3"),
            args("-k|2001:db8::2"),
            args("-k|::/0|-k|2001:db8::2"),
            args("-i|wg0|-k|0.0.0.0/0"),
            args("-i|wg0|-k|::/0"),
        ]
    );
    assert_eq!(
        calls[0].1,
        format!(
            "table <qkd_peer> const {{ 198.51.100.2 198.51.100.3 2001:db8::2 }}\n\
             block drop quick on $wg_if\n{LOCK_RULES}"
        )
    );
    assert!(calls[1..].iter().all(|c| c.1.is_empty()));
}

#[test]
fn lockdown_fails_if_load_or_any_kill_fails() {
    let mut r = Rec::new();
    // The load fails: the kills still run (old states must not pass
    // whatever the anchor holds), and the error names the command and
    // pfctl's words.
    r.set("exit", "1");
    r.set("stderr", "stdin:2: syntax error\n");
    let e =
        r.fw.apply(&dr(), Enforcement::Lockdown, "block quick")
            .unwrap_err();
    assert_eq!(r.take().len(), 7);
    assert!(e.command.ends_with("pfctl -a qkdpfd/dr -D link=dr -D wg_if=wg0 -D wg_port=51820 -D peer4=198.51.100.2 -D peer6=2001:db8::2 -f -"), "{e}");
    assert_eq!(e.status, "exit status 1");
    assert!(e.to_string().ends_with(": stdin:2: syntax error"), "{e}");
    // One kill fails: the others still run, and the flip is an error.
    r.unset("exit");
    r.unset("stderr");
    r.set("fail_on", "-k 0.0.0.0/0 -k 198.51.100.2");
    let e =
        r.fw.apply(&dr(), Enforcement::Lockdown, "block quick")
            .unwrap_err();
    assert_eq!(r.take().len(), 7);
    assert!(e.stderr.contains("DIOCKILLSTATES"), "{e}");
    // An open flip has no kills, so the same failure does not touch it.
    r.fw.apply(&dr(), Enforcement::Open, OPEN).unwrap();
    assert_eq!(r.take().len(), 1);
}

#[test]
fn check_parses_only() {
    let r = Rec::new();
    r.fw.check(&dr(), Enforcement::Open, OPEN).unwrap();
    assert_eq!(
        r.take(),
        [(
            args(
                "-n|-a|qkdpfd/dr|-D|link=dr|-D|wg_if=wg0|-D|wg_port=51820\
                 |-D|peer4=198.51.100.2|-D|peer6=2001:db8::2|-f|-"
            ),
            format!("table <qkd_peer> const {{ 198.51.100.2 2001:db8::2 }}\n{OPEN}")
        )]
    );
    // Refused before pfctl: reading other files, unknown macros.
    for bad in [
        "include \"/etc/pf.conf\"",
        "pass to $nope",
        "load anchor x from \"/tmp/x\"",
    ] {
        assert!(r.fw.check(&dr(), Enforcement::Open, bad).is_err(), "{bad}");
    }
    assert!(r.take().is_empty());
    // pfctl's refusal comes back as the error text.
    r.set("exit", "1");
    r.set("stderr", "stdin:2: syntax error\n");
    let e =
        r.fw.check(&dr(), Enforcement::Open, "pas quick")
            .unwrap_err();
    assert!(
        e.contains("stdin:2: syntax error") && e.contains("pfctl -n -a qkdpfd/dr"),
        "{e}"
    );
}

#[test]
fn sample_rulesets_pass_check() {
    let r = Rec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pf-anchors/bundle/anchors");
    for (file, state) in [
        ("open.pf", Enforcement::Open),
        ("lockdown.pf", Enforcement::Lockdown),
    ] {
        let text = fs::read_to_string(dir.join(file)).unwrap();
        r.fw.check(&dr(), state, &text)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let calls = r.take();
        assert_eq!(calls.len(), 1);
        let input = match state {
            Enforcement::Open => text.clone(),
            // The lockdown is checked as it is loaded: with qkdpfd's rules.
            Enforcement::Lockdown => format!("{text}{LOCK_RULES}"),
        };
        assert!(calls[0].1.ends_with(&input), "{}", calls[0].1);
    }
}

#[test]
fn clear_loads_the_block_rules_then_kills_states() {
    let mut r = Rec::new();
    r.fw.clear(&dr()).unwrap();
    let calls = r.take();
    let argvs: Vec<Vec<String>> = calls.iter().map(|c| c.0.clone()).collect();
    let mut want = vec![args(
        "-a|qkdpfd/dr|-D|link=dr|-D|wg_if=wg0|-D|wg_port=51820\
         |-D|peer4=198.51.100.2|-D|peer6=2001:db8::2|-f|-",
    )];
    want.extend(DR_KILLS.map(args));
    assert_eq!(argvs, want);
    assert_eq!(
        calls[0].1,
        format!("table <qkd_peer> const {{ 198.51.100.2 2001:db8::2 }}\n{LOCK_RULES}")
    );
    // A load that fails (the kernel refuses the transaction) still reaches
    // the state kills: established flows must not keep passing.
    r.set("exit", "1");
    r.set("stderr", "pfctl: Unable to load rules into kernel\n");
    assert!(r.fw.clear(&dr()).is_err());
    assert_eq!(r.take().len(), 7);
}

/// Many links cleared (the panic hook) by one anchor load of qkdpfd's own
/// block rules, then the state kills, as a site lock without a policy;
/// a load that fails leaves it to each link's own clear.
#[test]
fn many_clears_are_one_load() {
    let mut r = Rec::new();
    let links = [dr(), spoke()];
    let all: Vec<&LinkTarget> = links.iter().collect();
    let out = r.fw.clear_many(&all);
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let calls = r.take();
    assert_eq!(calls[0].0, args("-a|qkdpfd|-f|-"));
    assert!(calls[0].1.contains("anchor \"dr\" {\n"), "{}", calls[0].1);
    assert!(
        calls[0].1.contains("anchor \"spoke\" {\n"),
        "{}",
        calls[0].1
    );
    assert!(calls[0].1.ends_with(&format!("{LOCK_RULES}}}\n")));
    // dr's kills and spoke's own two (wg0's are shared), as a site lock's.
    assert_eq!(calls.len(), 1 + DR_KILLS.len() + 2);
    // A site lock without a policy is this same load: the panic hook
    // does that one and skips this.
    assert!(r.fw.site_lock_clears());
    assert!(r.fw.lock_site(&links, None).unwrap());
    let site = r.take();
    assert_eq!(site.len(), calls.len());
    assert_eq!(site[0], calls[0]);
    failed_kill_then_refused_load(&mut r, |r| r.fw.clear_many(&all));
}

/// After one load of [dr, spoke] by `many`: one of dr's kills refused,
/// then the one load refused. dr is then not done (its states may pass)
/// and spoke is; with the load refused, each link's own load and kills.
fn failed_kill_then_refused_load(
    r: &mut Rec,
    mut many: impl FnMut(&mut Rec) -> Vec<Result<(), qkdpfd::tool::FwError>>,
) {
    r.set("fail_on", "-k 0.0.0.0/0 -k 198.51.100.2");
    let out = many(r);
    assert!(out[0].is_err(), "{out:?}");
    assert!(out[1].is_ok(), "{out:?}");
    r.unset("fail_on");
    r.take();
    r.set("exit", "1");
    r.set("stderr", "pfctl: Unable to load rules into kernel\n");
    let out = many(r);
    assert!(out.iter().all(Result::is_err));
    let loads = (r.take().into_iter())
        .filter(|c| c.0.last().is_some_and(|a| a == "-"))
        .count();
    assert_eq!(loads, 1 + 2);
}

/// A new bundle's re-application, or the links of a shared interface a
/// lockdown holds with it: the lockdown of every link in one load, then
/// each link's kills; a link whose kill failed is not locked; a refused
/// load is each link's own load and kills.
#[test]
fn many_lockdowns_are_one_load() {
    let mut r = Rec::new();
    let links = [dr(), spoke()];
    let all: Vec<&LinkTarget> = links.iter().collect();
    let lockdown = "block drop quick on $wg_if\n";
    let out = r.fw.lock_many(&all, lockdown);
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let calls = r.take();
    assert_eq!(calls[0].0, args("-a|qkdpfd|-f|-"));
    for anchor in ["anchor \"dr\" {\n", "anchor \"spoke\" {\n"] {
        assert!(calls[0].1.contains(anchor), "{}", calls[0].1);
    }
    assert_eq!(calls[0].1.matches(lockdown).count(), 2, "{}", calls[0].1);
    assert_eq!(calls.len(), 1 + DR_KILLS.len() + 2);
    failed_kill_then_refused_load(&mut r, |r| r.fw.lock_many(&all, lockdown));
}

/// What `pfctl -s rules` prints for pf.conf.example's data plane.
const MAIN: &str = "block drop log all\n\
pass out quick on egress proto udp from any to 198.51.100.2 port = 8071 keep state\n\
anchor \"qkdpfd/*\" all\n\
block drop log quick proto udp from any to 198.51.100.2 port = 51820\n\
block drop log quick proto udp from 198.51.100.2 port = 51820 to any\n\
block drop log quick on wg0 all\n";

const ENABLED: &str = "Status: Enabled for 0 days 00:10:00           Debug: err\n";

fn observed(r: &mut Rec) -> fw::Observed {
    r.fw.observe(&[dr()], None).unwrap()["dr"].state.clone()
}

#[test]
fn observe_reads_status_main_ruleset_and_anchor() {
    let mut r = Rec::new();
    r.set("out.-s_info_", ENABLED);
    r.set("out.-s_rules_", MAIN);
    // The lockdown as pfctl lists it: bundle rules, then ours.
    r.set(
        "out.-a_qkdpfd_dr_-s_rules_",
        "block drop log quick on wg0 all\n\
         block drop quick proto udp from any to <qkd_peer> port = 51820 label \"qkdpfd-lockdown\"\n\
         block drop quick proto udp from <qkd_peer> port = 51820 to any label \"qkdpfd-lockdown\"\n\
         block drop quick on wg0 all label \"qkdpfd-lockdown\"\n",
    );
    assert_eq!(observed(&mut r), fw::Observed::Locked);
    // One listing of every link's anchor first; a link missing from it is
    // read on its own.
    assert_eq!(
        r.take().into_iter().map(|c| c.0).collect::<Vec<_>>(),
        [
            args("-s|info"),
            args("-s|rules"),
            args("-a|qkdpfd/*|-s|rules"),
            args("-a|qkdpfd/dr|-s|rules")
        ]
    );
    // The open ruleset, put there by someone else: not ours, whatever it
    // holds. Loaded by us, it is.
    r.set(
        "out.-a_qkdpfd_dr_-s_rules_",
        "pass quick on wg0 all flags S/SA keep state (if-bound)\n",
    );
    assert!(matches!(observed(&mut r), fw::Observed::Unknown { .. }));
    r.fw.apply(&dr(), Enforcement::Open, OPEN).unwrap();
    assert_eq!(observed(&mut r), fw::Observed::Open);
    // One of our block rules gone: neither.
    r.set(
        "out.-a_qkdpfd_dr_-s_rules_",
        "block drop quick on wg0 all label \"qkdpfd-lockdown\"\n",
    );
    assert!(matches!(
        observed(&mut r),
        fw::Observed::Unknown {
            skeleton: false,
            ..
        }
    ));
    // An anchor never loaded: the kernel says EINVAL, pfctl prints "Anchor
    // does not exist" and exits 0 with nothing on stdout; nothing proven.
    r.unset("out.-a_qkdpfd_dr_-s_rules_");
    r.set(
        "err.-a_qkdpfd_dr_-s_rules_",
        "pfctl: Anchor does not exist\n",
    );
    assert!(matches!(
        observed(&mut r),
        fw::Observed::Unknown {
            skeleton: false,
            ..
        }
    ));
    r.unset("err.-a_qkdpfd_dr_-s_rules_");
    // pf disabled (`pfctl -d`): damaged, whatever the anchor says.
    r.set("out.-s_info_", "Status: Disabled for 0 days 00:10:00\n");
    assert!(matches!(
        observed(&mut r),
        fw::Observed::Unknown { skeleton: true, .. }
    ));
    r.set("out.-s_info_", ENABLED);
    // pf.conf reloaded without the anchor, or without the link's block rules.
    r.set(
        "out.-s_rules_",
        &MAIN.replace("anchor \"qkdpfd/*\" all\n", ""),
    );
    assert!(matches!(
        observed(&mut r),
        fw::Observed::Unknown { skeleton: true, .. }
    ));
    r.set(
        "out.-s_rules_",
        &MAIN.replace("block drop log quick on wg0 all\n", ""),
    );
    assert!(matches!(
        observed(&mut r),
        fw::Observed::Unknown { skeleton: true, .. }
    ));
    // Anything else from pfctl is an error for the caller (= not proven).
    r.set("out.-s_rules_", MAIN);
    r.set("err.-s_info_", "pfctl: /dev/pf: Permission denied\n");
    assert!(r.fw.observe(&[dr()], None).is_err());
}

#[test]
fn a_failed_state_kill_is_not_locked_until_a_kill_works() {
    let mut r = Rec::new();
    r.set("out.-s_info_", ENABLED);
    r.set("out.-s_rules_", MAIN);
    r.set(
        "out.-a_qkdpfd_dr_-s_rules_",
        &LOCK_RULES.replace("$wg_if", "wg0"),
    );
    r.set("fail_on", "-k 0.0.0.0/0 -k 198.51.100.2");
    assert!(r.fw.apply(&dr(), Enforcement::Lockdown, "").is_err());
    assert!(matches!(observed(&mut r), fw::Observed::Unknown { .. }));
    r.unset("fail_on");
    r.fw.clear(&dr()).unwrap();
    assert_eq!(observed(&mut r), fw::Observed::Locked);
}

/// OpenBSD issue item 3: the kills run in the link's routing domain (`-V`)
/// and also end the states the open rules created, by their labels.
#[test]
fn kills_use_the_rdomain_and_the_open_rules_labels() {
    let mut r = Rec::new();
    let mut link = dr();
    link.rdomain = 3;
    link.udp_rdomain = 3;
    let open = "pass quick on $wg_if keep state (if-bound) label \"qkd-dr\"\n\
                pass quick proto udp to $peer4 label \"bad label\" # not plain: skipped\n";
    // The kills' argvs of a lockdown after an open with `open`'s labels
    // (the first call of the lockdown is its anchor load).
    let kills = |r: &mut Rec, link: &qkdpfd::ruleset::LinkTarget| -> Vec<Vec<String>> {
        r.fw.apply(link, Enforcement::Open, open).unwrap();
        r.take();
        r.fw.apply(link, Enforcement::Lockdown, "").unwrap();
        r.take().into_iter().skip(1).map(|c| c.0).collect()
    };
    assert_eq!(
        kills(&mut r, &link),
        [
            args("-V|3|-k|198.51.100.2"),
            args("-V|3|-k|0.0.0.0/0|-k|198.51.100.2"),
            args("-V|3|-k|2001:db8::2"),
            args("-V|3|-k|::/0|-k|2001:db8::2"),
            args("-V|3|-i|wg0|-k|0.0.0.0/0"),
            args("-V|3|-i|wg0|-k|::/0"),
            args("-V|3|-k|label|-k|qkd-dr"),
        ]
    );
    // The tunnel's UDP in another routing domain (wg(4)'s wgrtable): the
    // kills by address and label run there too, those on wg0 in its own.
    link.udp_rdomain = 0;
    assert_eq!(
        kills(&mut r, &link),
        [
            args("-V|3|-k|198.51.100.2"),
            args("-V|3|-k|0.0.0.0/0|-k|198.51.100.2"),
            args("-k|198.51.100.2"),
            args("-k|0.0.0.0/0|-k|198.51.100.2"),
            args("-V|3|-k|2001:db8::2"),
            args("-V|3|-k|::/0|-k|2001:db8::2"),
            args("-k|2001:db8::2"),
            args("-k|::/0|-k|2001:db8::2"),
            args("-V|3|-i|wg0|-k|0.0.0.0/0"),
            args("-V|3|-i|wg0|-k|::/0"),
            args("-V|3|-k|label|-k|qkd-dr"),
            args("-k|label|-k|qkd-dr"),
        ]
    );
    assert_eq!(
        qkdpfd::ruleset::pf::rule_labels(
            "pass label \"x;y\"\npass label \"$link\"\npass label \"ok.1\""
        ),
        ["ok.1"]
    );
}

/// A tick costs three pfctl runs whatever the number of links: the child
/// anchors come in one listing (`-a 'qkdpfd/*' -s rules`, pfctl.c 1.397's
/// wildcard recursion), each link judged from its block.
#[test]
fn a_tick_reads_every_anchor_in_one_listing() {
    let mut r = Rec::new();
    r.set("out.-s_info_", ENABLED);
    r.set(
        "out.-s_rules_",
        &format!("{MAIN}block drop log quick on wg1 all\n"),
    );
    r.set(
        "out.-a_qkdpfd_*_-s_rules_",
        "anchor \"dr\" all {\n  pass quick on wg0 all\n}\n\
         anchor \"lab\" all {\n\
           block drop quick proto udp from any to <qkd_peer> port = 51821 label \"qkdpfd-lockdown\"\n\
           block drop quick proto udp from <qkd_peer> port = 51821 to any label \"qkdpfd-lockdown\"\n\
           block drop quick on wg1 all label \"qkdpfd-lockdown\"\n\
         }\n",
    );
    let lab = LinkTarget {
        name: "lab".into(),
        wg_if: "wg1".into(),
        wg_port: 51821,
        ..dr()
    };
    let seen = r.fw.observe(&[dr(), lab], None).unwrap();
    assert_eq!(seen["dr"].state, fw::Observed::Open);
    assert_eq!(seen["lab"].state, fw::Observed::Locked);
    assert_eq!(
        r.take().into_iter().map(|c| c.0).collect::<Vec<_>>(),
        [
            args("-s|info"),
            args("-s|rules"),
            args("-a|qkdpfd/*|-s|rules")
        ]
    );
    // A flushed anchor leaves the listing: read on its own, not locked.
    r.set(
        "out.-a_qkdpfd_*_-s_rules_",
        "anchor \"dr\" all {\n  pass quick on wg0 all\n}\n",
    );
    let seen =
        r.fw.observe(
            &[
                dr(),
                LinkTarget {
                    name: "lab".into(),
                    wg_if: "wg1".into(),
                    ..dr()
                },
            ],
            None,
        )
        .unwrap();
    assert!(matches!(seen["lab"].state, fw::Observed::Unknown { .. }));
    assert_eq!(r.take().len(), 4);
}

/// Issue 13's OpenBSD paragraph: a site-wide lockdown (and a QBER source's
/// links) is one anchor load for every link (`pfctl -a qkdpfd -f -`, each
/// link a brace anchor with its own macros and table: one DIOCXCOMMIT),
/// then the links' state kills, each distinct argv once.
#[test]
fn a_site_lock_is_one_load_for_every_link() {
    let mut r = Rec::new();
    let links = [dr(), spoke()];
    let lockdown = "block drop quick on $wg_if\n";
    assert!(r.fw.lock_site(&links, Some(lockdown)).unwrap());
    let calls = r.take();
    assert_eq!(calls[0].0, args("-a|qkdpfd|-f|-"));
    let table = |addrs: &str| format!("table <qkd_peer> const {{ {addrs} }}\n");
    assert_eq!(
        calls[0].1,
        format!(
            "link = \"dr\"\nwg_if = \"wg0\"\nwg_port = \"51820\"\n\
             peer4 = \"198.51.100.2\"\npeer6 = \"2001:db8::2\"\n\
             anchor \"dr\" {{\n{}{lockdown}{LOCK_RULES}}}\n\
             link = \"spoke\"\nwg_if = \"wg0\"\nwg_port = \"51820\"\npeer4 = \"198.51.100.7\"\n\
             anchor \"spoke\" {{\n{}{lockdown}{LOCK_RULES}}}\n",
            table("198.51.100.2 2001:db8::2"),
            table("198.51.100.7"),
        )
    );
    let kills: Vec<Vec<String>> = calls[1..].iter().map(|c| c.0.clone()).collect();
    // spoke shares wg0's kills with dr: not run twice.
    let mut want = DR_KILLS.map(args).to_vec();
    want.extend([
        args("-k|198.51.100.7"),
        args("-k|0.0.0.0/0|-k|198.51.100.7"),
    ]);
    assert_eq!(kills, want);

    // A source's links only; without a policy, qkdpfd's own drop alone.
    let mut src = links.clone();
    src[1].qber = "west".into();
    assert!(r.fw.lock_source("west", &src, None).unwrap());
    let calls = r.take();
    // The load, then spoke's own four kills.
    assert_eq!(calls.len(), 5);
    assert!(
        calls[0].1.starts_with("link = \"spoke\"\n"),
        "{}",
        calls[0].1
    );
    assert!(!calls[0].1.contains("\"dr\""));
    assert!(
        calls[0]
            .1
            .ends_with(&format!("{}{LOCK_RULES}}}\n", table("198.51.100.7")))
    );
    assert!(!r.fw.lock_source("east", &src, None).unwrap());
    assert!(r.take().is_empty());
}

/// Where one load could differ from the per-link loads, or fails, nothing
/// is killed and the caller locks link by link.
#[test]
fn a_site_lock_pf_cannot_do_in_one_load_is_left_to_each_link() {
    let mut r = Rec::new();
    let mut spoke = dr();
    spoke.name = "spoke".into();
    spoke.addrs6.clear();
    let links = [dr(), spoke];
    // spoke has no $peer6: the one load would give it dr's.
    let e =
        r.fw.lock_site(&links, Some("block to $peer6\n"))
            .unwrap_err();
    assert!(e.to_string().contains("$peer6"), "{e}");
    let e =
        r.fw.lock_site(&links, Some("include \"/etc/x\"\n"))
            .unwrap_err();
    assert!(e.to_string().contains("include"), "{e}");
    assert!(r.take().is_empty());
    // pfctl refuses the load: rolled back, no kills.
    r.set("exit", "1");
    r.set("stderr", "stdin:9: syntax error\n");
    let e = r.fw.lock_site(&links, Some("block\n")).unwrap_err();
    assert!(e.to_string().contains("syntax error"), "{e}");
    assert_eq!(r.take().len(), 1);
    // A failed kill: the load stands, the link is not read back locked.
    r.unset("exit");
    r.unset("stderr");
    // (dr's own: spoke has no IPv6 address.)
    r.set("fail_on", "-k ::/0 -k 2001:db8::2");
    assert!(r.fw.lock_site(&links, Some("block\n")).unwrap());
    r.take();
    r.unset("fail_on");
    r.set("out.-s_info_", ENABLED);
    r.set("out.-s_rules_", MAIN);
    let locked = "block drop quick proto udp from any to <qkd_peer> port = 51820 label \"qkdpfd-lockdown\"\n\
         block drop quick proto udp from <qkd_peer> port = 51820 to any label \"qkdpfd-lockdown\"\n\
         block drop quick on wg0 all label \"qkdpfd-lockdown\"\n";
    r.set("out.-a_qkdpfd_dr_-s_rules_", locked);
    r.set("out.-a_qkdpfd_spoke_-s_rules_", locked);
    let seen = r.fw.observe(&links, None).unwrap();
    assert_ne!(seen["dr"].state, fw::Observed::Locked);
    assert_eq!(seen["spoke"].state, fw::Observed::Locked);
}

/// pf enabled, the main ruleset in place and `dr` locked with `lockdown`;
/// with qkdpfd's block rules for `dr` as pfctl lists them.
fn locked_dr(lockdown: &str) -> (Rec, String) {
    let mut r = Rec::new();
    r.set("out.-s_info_", ENABLED);
    r.set("out.-s_rules_", MAIN);
    r.fw.apply(&dr(), Enforcement::Lockdown, lockdown).unwrap();
    let ours = LOCK_RULES
        .replace("$wg_if", "wg0")
        .replace("$wg_port", "51820");
    (r, ours)
}

/// `text`'s lines as the wildcard listing prints them inside an anchor.
fn indented(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// An anchor loaded again by someone else, qkdpfd's three labelled block
/// rules still in it but a `pass quick` ahead of them: the label count
/// alone reads it locked. The first listing of each kind after our own
/// load (the tick's wildcard listing, the link's own) is what later
/// listings of that kind must show; anything else proves nothing until a
/// load of ours succeeds.
#[test]
fn an_anchor_changed_by_someone_else_is_not_locked() {
    let (mut r, ours) = locked_dr("");
    let load = r.take().remove(0).0.join(" ");
    assert!(load.ends_with("-f -"), "{load}");
    r.set(
        "out.-a_qkdpfd_*_-s_rules_",
        &format!("anchor \"dr\" all {{\n{}}}\n", indented(&ours)),
    );
    assert_eq!(observed(&mut r), fw::Observed::Locked, "the tick's listing");
    r.set("out.-a_qkdpfd_dr_-s_rules_", &ours);
    let one = r.fw.observe(&[dr()], Some("dr")).unwrap();
    assert_eq!(one["dr"].state, fw::Observed::Locked, "its own listing");
    r.unset("out.-a_qkdpfd_*_-s_rules_");
    let tampered = format!("pass quick on wg0 all flags S/SA keep state\n{ours}");
    r.set("out.-a_qkdpfd_dr_-s_rules_", &tampered);
    assert_eq!(fw::pf::judge_anchor(&tampered, false), fw::Observed::Locked);
    match observed(&mut r) {
        fw::Observed::Unknown { why, .. } => {
            assert!(why.contains("anchor qkdpfd/dr changed since qkdpfd loaded it"))
        }
        other => panic!("{other:?}"),
    }
    // Still not ours at the next read, and the link's own read agrees.
    let one = r.fw.observe(&[dr()], Some("dr")).unwrap();
    assert!(matches!(one["dr"].state, fw::Observed::Unknown { .. }));
    // A load that fails (its kills work) leaves the anchor as it was:
    // still not ours.
    r.set("fail_on", &load);
    assert!(r.fw.apply(&dr(), Enforcement::Lockdown, "").is_err());
    r.unset("fail_on");
    assert!(matches!(observed(&mut r), fw::Observed::Unknown { .. }));
    // What the parent does then: the lockdown loaded again.
    r.fw.apply(&dr(), Enforcement::Lockdown, "").unwrap();
    r.set("out.-a_qkdpfd_dr_-s_rules_", &ours);
    assert_eq!(observed(&mut r), fw::Observed::Locked);
}

/// A named anchor called from a link's anchor: the tick's wildcard listing
/// expands it (`anchor "x" all {` ... `}`), the link's own listing does
/// not. Each kind of listing is compared with its own first one, so reads
/// of both kinds in turn never call the link changed.
#[test]
fn a_named_anchor_inside_reads_the_same_by_either_listing() {
    let (mut r, ours) = locked_dr("anchor \"x\"");
    let x = "anchor \"x\" all {\n  pass on lo0 all\n}\n";
    r.set(
        "out.-a_qkdpfd_*_-s_rules_",
        &format!(
            "anchor \"dr\" all {{\n{}{}}}\n",
            indented(x),
            indented(&ours)
        ),
    );
    r.set(
        "out.-a_qkdpfd_dr_-s_rules_",
        &format!("anchor \"qkdpfd/dr/x\" all\n{ours}"),
    );
    for _ in 0..2 {
        assert_eq!(observed(&mut r), fw::Observed::Locked, "the tick's");
        let one = r.fw.observe(&[dr()], Some("dr")).unwrap();
        assert_eq!(one["dr"].state, fw::Observed::Locked, "its own");
    }
    // A change shows in either.
    r.set(
        "out.-a_qkdpfd_dr_-s_rules_",
        &format!("pass quick all\nanchor \"qkdpfd/dr/x\" all\n{ours}"),
    );
    let one = r.fw.observe(&[dr()], Some("dr")).unwrap();
    assert!(matches!(one["dr"].state, fw::Observed::Unknown { .. }));
}
