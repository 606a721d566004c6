//! The machinery of tests/differential.rs: mutants laid out on disk, the
//! reference tools run on them, and the tally of verdicts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone)]
pub enum Node {
    File(Vec<u8>),
    /// A symlink to this target.
    Link(PathBuf),
    Dir,
}

pub struct Mutant {
    pub op: &'static str,
    pub files: BTreeMap<String, Node>,
}

/// The rows of a table of differences, `| \`op\` | \`reason\` | why |`, as
/// (op, reason, why); each row must also be a line of FUZZING.md.
pub fn table_rows(table: &'static str) -> Vec<(&'static str, &'static str, &'static str)> {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/FUZZING.md")).unwrap();
    let mut out = Vec::new();
    for line in table.lines() {
        assert!(doc.lines().any(|l| l == line), "not in FUZZING.md: {line}");
        let cells: Vec<&str> = line.split(" | ").collect();
        let [op, reason, why] = cells[..] else {
            panic!("bad table row {line}");
        };
        let op = op.trim_start_matches("| ").trim_matches('`');
        out.push((op, reason.trim_matches('`'), why.trim_end_matches(" |")));
    }
    assert!(!out.is_empty());
    out
}

/// Tally of verdicts; `diffs` maps "op: reason" to a count.
#[derive(Default)]
pub struct Tally {
    both_accept: usize,
    both_refuse: usize,
    later: BTreeMap<&'static str, usize>,
    diffs: BTreeMap<String, usize>,
    unexplained: Vec<String>,
}

impl Tally {
    pub fn record(
        &mut self,
        table: &[(&str, &str, &str)],
        op: &str,
        ours: Result<Option<&'static str>, &'static str>,
        tool: bool,
        detail: impl FnOnce() -> String,
    ) {
        match (ours, tool) {
            (Ok(later), true) => {
                self.both_accept += 1;
                if let Some(r) = later {
                    *self.later.entry(r).or_default() += 1;
                }
            }
            (Err(_), false) => self.both_refuse += 1,
            (Err(reason), true) => {
                let key = format!("{op}: {reason}");
                if !table.iter().any(|(o, r, _)| *o == op && *r == reason) {
                    self.unexplained
                        .push(format!("{key} (tool accepts): {}", detail()));
                }
                *self.diffs.entry(key).or_default() += 1;
            }
            (Ok(_), false) => self
                .unexplained
                .push(format!("{op}: WE ACCEPT, the tool refuses: {}", detail())),
        }
    }

    pub fn report(&self, tool: &str, n: usize, secs: f64, table: &[(&str, &str, &str)]) {
        // Straight to fd 2: the harness would swallow eprintln! of a passing test.
        let mut out = String::new();
        macro_rules! say {
            ($o:ident, $($a:tt)*) => { $o.push_str(&format!($($a)*)); $o.push('\n') };
        }
        say!(out, "{tool}: {n} mutants in {secs:.1} s");
        say!(out, "  accepted by both: {}", self.both_accept);
        for (r, c) in &self.later {
            say!(
                out,
                "    of which refused by us at a later stage ({r}): {c}"
            );
        }
        say!(out, "  refused by both: {}", self.both_refuse);
        for (k, c) in &self.diffs {
            say!(out, "  we refuse, {tool} accepts, {k}: {c}");
        }
        for (o, r, _) in table {
            if !self.diffs.contains_key(&format!("{o}: {r}")) {
                say!(out, "  (listed difference not met this run: {o}: {r})");
            }
        }
        for u in &self.unexplained {
            say!(out, "  UNEXPLAINED {u}");
        }
        let _ = std::io::Write::write_all(&mut std::io::stderr(), out.as_bytes());
        assert!(
            self.unexplained.is_empty(),
            "{} unexplained disagreements with {tool}",
            self.unexplained.len()
        );
        assert!(self.both_accept > 0 && self.both_refuse > 0, "vacuous run");
    }
}

/// One random edit: flip a bit, set a byte, delete, insert, truncate, extend.
pub fn mutate_bytes(rng: &mut StdRng, data: &mut Vec<u8>, range: std::ops::Range<usize>) {
    let at = if range.is_empty() {
        range.start
    } else {
        rng.gen_range(range.clone())
    };
    const INTERESTING: &[u8] = b" \t\r\n\0()=/.-_+aAfF09ED";
    let byte = |rng: &mut StdRng| match rng.gen_bool(0.5) {
        true => INTERESTING[rng.gen_range(0..INTERESTING.len())],
        false => rng.r#gen(),
    };
    match rng.gen_range(0..6) {
        0 if at < data.len() => data[at] ^= 1 << rng.gen_range(0..8),
        1 if at < data.len() => data[at] = byte(rng),
        2 if at < data.len() => {
            data.remove(at);
        }
        3 => data.insert(at.min(data.len()), byte(rng)),
        4 => data.truncate(at),
        _ => {
            let n = rng.gen_range(1..4);
            for _ in 0..n {
                let b = byte(rng);
                data.push(b);
            }
        }
    }
}

pub fn lines(text: &[u8]) -> Vec<Vec<u8>> {
    text.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

pub fn set_line(text: &[u8], i: usize, f: impl FnOnce(&str) -> String) -> Vec<u8> {
    let mut ls = lines(text);
    let s = String::from_utf8(ls[i].clone()).unwrap();
    ls[i] = f(&s).into_bytes();
    ls.concat()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn lay_out(dir: &Path, files: &BTreeMap<String, Node>) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap();
    }
    fs::create_dir_all(dir).unwrap();
    for (name, node) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        match node {
            Node::File(d) => fs::write(&path, d).unwrap(),
            Node::Link(t) => std::os::unix::fs::symlink(t, &path).unwrap(),
            Node::Dir => fs::create_dir_all(&path).unwrap(),
        }
    }
}

pub fn tool_accepts(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `a` differs from `b` only in base64 padding bits a lenient decoder drops.
pub fn same_when_lenient(a: &[u8], b: &[u8]) -> bool {
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let (la, lb) = (lines(a), lines(b));
    la.len() == lb.len()
        && la.iter().zip(&lb).all(|(x, y)| {
            x == y
                || lenient.decode(x.trim_ascii_end()).ok()
                    == Some(B64.decode(y.trim_ascii_end()).unwrap_or_default())
        })
}
