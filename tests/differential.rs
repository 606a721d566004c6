//! Differential checks of bundle verification against the reference tools
//! (FUZZING.md, "Differential checks"): a few thousand deterministic mutants
//! of a signify bundle, each judged by our verifier and by `signify-openbsd
//! -C`, and of a minisign signature, judged by `minisign::verify` and by
//! `minisign -V`. Both must agree, or the difference must be in
//! `SIGNIFY_DIFFS` / `MINISIGN_DIFFS` (the same tables as FUZZING.md), and
//! every listed difference is one where we refuse and the tool accepts:
//! accepting anything the tool refuses always fails the test.
//!
//! signify -C checks the signature, then each listed file's digest; our
//! later checks (nothing unlisted present, policy.toml, rulesets) have no
//! counterpart, so a refusal at one of those stages counts as passing the
//! stages signify has (the counts show how many).

mod common;

use common::bundle::{self, MINISIGN, SIGNIFY, TestKeys};
use common::differential::{
    Mutant, Node, Tally, hex, lay_out, lines, mutate_bytes, same_when_lenient, set_line,
    table_rows, tool_accepts,
};
use ed25519_dalek::{Signer, SigningKey};
use qkdpfd::policy::{self, AcceptAll, PublicKey, Reject, VerifyOpts, signify};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

const SEED: u64 = 0x716b_6470_6664_0003;
const SIGNIFY_RANDOM: usize = 1800;
const MINISIGN_RANDOM: usize = 900;

/// Our refusals that signify -C accepts: mutation | our reason | why. The same rows
/// are in FUZZING.md ("Differential checks"); the test checks that.
const SIGNIFY_DIFFS: &str = "\
| `file-symlink` | `not-regular` | a listed file is a symlink: signify follows it, we take regular files only |
| `file-extra-bad-name` | `bad-name` | an unlisted file named outside [A-Za-z0-9._-]: signify never looks at it, we refuse the name |
| `file-extra-nested-deep` | `bad-name` | an unlisted file two directories deep: signify never looks at it, we allow one level |
| `file-plain-list-differs` | `bad-list` | a SHA256 file beside SHA256.sig that differs from the signed list: signify ignores it, DESIGN 4 requires them equal |
| `list-name-with-space` | `bad-name` | a listed name with a space: signify's %[^)] takes it, we allow [A-Za-z0-9._-] only |
| `list-nested-deep` | `bad-name` | a listed file two directories deep |
| `list-absolute` | `bad-list` | an absolute path in the list: signify opens it, we never read outside the bundle |
| `list-dot-dot` | `bad-list` | a ../ path in the list: signify opens it, we never read outside the bundle |
| `list-dot-slash` | `bad-list` | ./name: the same file for signify, a second spelling of a name for us |
| `list-double-slash` | `bad-list` | dir//name: the same file for signify, a second spelling of a name for us |
| `list-signature-name` | `bad-list` | SHA256 listed in its own signed list: signify checks it, we refuse signature files in the list |
| `list-duplicate-line` | `bad-list` | a name listed twice: signify checks it twice, we refuse duplicates |
| `list-sha512` | `bad-list` | a SHA512 line: signify reads SHA512 too, our bundles use SHA256 only |
| `list-empty` | `bad-list` | an empty signed list: signify checks nothing and succeeds, we refuse a bundle that lists nothing |
| `list-no-final-newline` | `bad-list` | the last line has no newline: signify reads it, we require every line to end with one |
| `list-nul` | `bad-list` | a NUL byte in the list: signify stops reading the list there, we refuse the line |
| `list-leading-space` | `bad-list` | signify's sscanf skips spaces before the algorithm, our line grammar is exact |
| `list-double-space` | `bad-list` | signify's sscanf takes any spacing around \"(\" and \"=\", our line grammar is exact |
| `list-tab` | `bad-list` | a tab for a space: sscanf takes any white space, our line grammar is exact |
| `list-trailing-space` | `bad-list` | sscanf stops the digest at white space, we refuse anything after the 64 hex digits |
| `list-trailing-text` | `bad-list` | sscanf ignores text after the digest, we refuse it |
| `list-random-spacing` | `bad-list` | random edits that only change spacing (see list-double-space, list-no-final-newline) |
| `sig-base64-space` | `bad-signature` | white space inside the base64 line: signify's b64_pton skips it, we decode the line as it is |
| `sig-base64-cr` | `bad-signature` | a CR ending the base64 line: b64_pton skips it, we refuse |
| `sig-base64-tab` | `bad-signature` | a tab inside the base64 line: b64_pton skips it, we refuse |
| `sig-comment-long` | `bad-signature` | signify allows 1023 comment bytes after the prefix, we allow 1024 bytes for the whole line |
| `sig-scalar-plus-l` | `bad-signature` | S + L (non-canonical S): signify reduces S mod L, verify_strict refuses it (malleability) |";

/// Our refusals that minisign -V accepts: mutation | our reason | why. The same rows
/// are in FUZZING.md ("Differential checks"); the test checks that.
const MINISIGN_DIFFS: &str = "\
| `legacy` | `bad-signature` | legacy (-l, \"Ed\") signatures: minisign -V takes them unless -H, we take prehashed ones only |
| `sig-not-utf8` | `bad-signature` | bytes that are not UTF-8 (in the untrusted comment, after the last line): minisign reads bytes, we read the file as text |
| `sig-base64-trailing-bits` | `bad-signature` | non-zero padding bits in a base64 line: minisign's decoder drops them, ours refuses them |
| `pubkey-random` | `bad-pubkey` | a damaged key file (comment line, text after the key line): minisign reads only the key line, we refuse the file at start-up |";

/// A named edit of one line.
type Edit = (&'static str, fn(&str) -> String);

/// Reasons from stages signify has no counterpart for.
const LATER_STAGES: &[&str] = &[
    "extra-file",
    "policy-syntax",
    "policy-invalid",
    "expired",
    "rollback",
    "ruleset-missing",
    "ruleset-check",
];

// ------------------------------------------------------------------ signify

struct SignifyBase {
    files: BTreeMap<String, Node>,
    list: Vec<u8>,
    comment: Vec<u8>,
    keynum: [u8; 8],
    sk: SigningKey,
    /// Where each mutant is laid out, and a directory beside it.
    dir: PathBuf,
    outside: PathBuf,
}

impl SignifyBase {
    fn sig_for(&self, list: &[u8]) -> Vec<u8> {
        self.sig_with(list, &self.sk.sign(list).to_bytes())
    }
    fn sig_with(&self, list: &[u8], sig: &[u8; 64]) -> Vec<u8> {
        let mut raw = b"Ed".to_vec();
        raw.extend_from_slice(&self.keynum);
        raw.extend_from_slice(sig);
        let mut out = self.comment.clone();
        out.extend_from_slice(B64.encode(raw).as_bytes());
        out.push(b'\n');
        out.extend_from_slice(list);
        out
    }
    fn sig(&self) -> Vec<u8> {
        match &self.files["SHA256.sig"] {
            Node::File(d) => d.clone(),
            _ => unreachable!(),
        }
    }
    fn with_sig(&self, op: &'static str, sig: Vec<u8>) -> Mutant {
        let mut files = self.files.clone();
        files.insert("SHA256.sig".into(), Node::File(sig));
        Mutant { op, files }
    }
    /// The list replaced and signed again with the bundle's key.
    fn with_list(&self, op: &'static str, list: Vec<u8>) -> Mutant {
        self.with_sig(op, self.sig_for(&list))
    }
    fn with_file(&self, op: &'static str, name: &str, node: Node) -> Mutant {
        let mut m = self.with_sig(op, self.sig());
        m.files.insert(name.into(), node);
        m
    }
    /// A new file, listed (with `line` built from name and digest) and signed.
    fn with_listed(&self, op: &'static str, name: &str, data: &[u8], line: &str) -> Mutant {
        let mut list = self.list.clone();
        list.extend_from_slice(line.as_bytes());
        let mut m = self.with_list(op, list);
        m.files.insert(name.into(), Node::File(data.to_vec()));
        m
    }
    fn content_names(&self) -> Vec<String> {
        self.files
            .keys()
            .filter(|n| !n.starts_with("SHA256"))
            .cloned()
            .collect()
    }
}

fn sha256_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(d))
}

fn signify_mutants(b: &SignifyBase, rng: &mut StdRng) -> Vec<Mutant> {
    let mut out = vec![b.with_sig("unchanged", b.sig())];
    let list = &b.list;
    let n = lines(list).len();
    let names = b.content_names();
    // The signed list, line by line.
    assert_eq!(n, names.len());
    for (i, name) in names.iter().enumerate() {
        let mut ls = lines(list);
        let dropped = ls.remove(i);
        out.push(b.with_list("list-drop-line", ls.concat()));
        let mut ls = lines(list);
        ls.insert(i, dropped.clone());
        out.push(b.with_list("list-duplicate-line", ls.concat()));
        let mut ls = lines(list);
        ls.swap(i, (i + 1) % n);
        out.push(b.with_list("list-reorder", ls.concat()));
        let edits: &[Edit] = &[
            ("list-crlf", |l| l.replace('\n', "\r\n")),
            ("list-trailing-space", |l| l.replace('\n', " \n")),
            ("list-trailing-text", |l| l.replace('\n', " junk\n")),
            ("list-leading-space", |l| format!(" {l}")),
            ("list-double-space", |l| l.replacen(" = ", "  =  ", 1)),
            ("list-tab", |l| l.replacen(' ', "\t", 1)),
            ("list-no-space", |l| l.replacen("SHA256 (", "SHA256(", 1)),
            ("list-uppercase-hex", |l| {
                let (a, h) = l.rsplit_once(' ').unwrap();
                format!("{a} {}", h.to_uppercase())
            }),
            ("list-short-hex", |l| {
                l.replacen("\n", "", 1)[..l.len() - 3].to_string() + "\n"
            }),
            ("list-long-hex", |l| l.replace('\n', "0\n")),
            ("list-dot-slash", |l| l.replacen(" (", " (./", 1)),
            ("list-dot-dot", |l| l.replacen(" (", " (../bundle/", 1)),
            ("list-double-slash", |l| l.replacen('/', "//", 1)),
            ("list-lowercase-algo", |l| l.replacen("SHA256", "sha256", 1)),
            ("list-blank-line", |l| format!("\n{l}")),
        ];
        for (op, f) in edits {
            out.push(b.with_list(op, set_line(list, i, f)));
        }
        let abs = b.dir.display().to_string();
        out.push(b.with_list(
            "list-absolute",
            set_line(list, i, |l| l.replacen(" (", &format!(" ({abs}/"), 1)),
        ));
        let data = match &b.files[name] {
            Node::File(d) => d.clone(),
            _ => unreachable!(),
        };
        // signify reads SHA512 lines too.
        use sha2::Digest;
        let sha512 = hex(&sha2::Sha512::digest(&data));
        out.push(b.with_list(
            "list-sha512",
            set_line(list, i, |_| format!("SHA512 ({name}) = {sha512}\n")),
        ));
        // The listed files themselves (signature intact).
        let mut m = b.with_sig("file-missing", b.sig());
        m.files.remove(name);
        out.push(m);
        out.push(b.with_file("file-empty", name, Node::File(Vec::new())));
        out.push(b.with_file("file-directory", name, Node::Dir));
        out.push(b.with_file("file-symlink", name, Node::Link(b.outside.join(name))));
        let mut d = data.clone();
        d.push(b'\n');
        out.push(b.with_file("file-appended", name, Node::File(d)));
    }
    out.push(b.with_list("list-no-final-newline", list[..list.len() - 1].to_vec()));
    out.push(b.with_list("list-empty", Vec::new()));
    out.push(b.with_list("list-blank-line", [list.as_slice(), b"\n"].concat()));
    out.push(b.with_list("list-nul", [list.as_slice(), b"\0junk\n"].concat()));
    out.push(
        b.with_list(
            "list-all-crlf",
            list.iter()
                .flat_map(|&c| match c {
                    b'\n' => vec![b'\r', b'\n'],
                    c => vec![c],
                })
                .collect(),
        ),
    );
    let missing = format!("SHA256 (absent.txt) = {}\n", sha256_hex(b""));
    out.push(b.with_list(
        "list-absent-file",
        [list.as_slice(), missing.as_bytes()].concat(),
    ));
    for (op, name) in [
        ("list-extra-file", "extra.txt"),
        ("list-extra-file", "anchors/extra.nft"),
        ("list-hidden-file", ".hidden"),
        ("list-name-with-space", "a b"),
        ("list-nested-deep", "anchors/x/y.nft"),
        ("list-signature-name", "SHA256"),
    ] {
        let line = format!("SHA256 ({name}) = {}\n", sha256_hex(b"x\n"));
        out.push(b.with_listed(op, name, b"x\n", &line));
    }
    // Files outside the list, signature untouched.
    for (op, name) in [
        ("file-extra", "extra.txt"),
        ("file-extra", "anchors/extra.nft"),
        ("file-extra-bad-name", "a b"),
        ("file-extra-nested-deep", "anchors/x/y.nft"),
        ("file-plain-list-differs", "SHA256"),
    ] {
        out.push(b.with_file(op, name, Node::File(b"x\n".to_vec())));
    }
    out.push(b.with_file("file-plain-list-equal", "SHA256", Node::File(list.clone())));
    out.push(b.with_file("file-extra-dir", "empty", Node::Dir));
    let mut m = b.with_sig("sig-symlink", Vec::new());
    m.files.insert(
        "SHA256.sig".into(),
        Node::Link(b.outside.join("SHA256.sig")),
    );
    out.push(m);
    // The signature file's own lines.
    let sig = b.sig();
    let emb = signify::parse_embedded(&sig).unwrap();
    let (c_end, b_end) = {
        let c = sig.iter().position(|&x| x == b'\n').unwrap();
        (
            c,
            c + 1 + sig[c + 1..].iter().position(|&x| x == b'\n').unwrap(),
        )
    };
    let with_comment = |text: &str| {
        let mut s = format!("untrusted comment: {text}\n").into_bytes();
        s.extend_from_slice(&sig[c_end + 1..]);
        s
    };
    out.push(b.with_sig("sig-comment-empty", with_comment("")));
    out.push(b.with_sig("sig-comment-space", with_comment(" ")));
    out.push(b.with_sig("sig-comment-cr", with_comment("x\r")));
    for len in [1000, 1004, 1005, 1006, 1023, 1024, 1025, 2000] {
        out.push(b.with_sig("sig-comment-long", with_comment(&"c".repeat(len))));
    }
    for (op, at, byte) in [
        ("sig-base64-space", b_end, b' '),
        ("sig-base64-cr", b_end, b'\r'),
        ("sig-base64-space", c_end + 5, b' '),
        ("sig-base64-tab", c_end + 5, b'\t'),
    ] {
        let mut s = sig.clone();
        s.insert(at, byte);
        out.push(b.with_sig(op, s));
    }
    let mut s = sig.clone();
    s.remove(b_end - 1);
    out.push(b.with_sig("sig-base64-no-padding", s));
    // S + L: the same signature with a non-canonical scalar.
    let mut raw = emb.sig.to_bytes();
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (s, l) in raw[32..].iter_mut().zip(l) {
        let v = *s as u16 + l as u16 + carry;
        *s = v as u8;
        carry = v >> 8;
    }
    out.push(b.with_sig("sig-scalar-plus-l", b.sig_with(list, &raw)));
    let mut other = b.keynum;
    other[0] ^= 1;
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&other);
    raw.extend_from_slice(&emb.sig.to_bytes());
    let mut s = b.comment.clone();
    s.extend_from_slice(format!("{}\n", B64.encode(raw)).as_bytes());
    s.extend_from_slice(list);
    out.push(b.with_sig("sig-other-keynum", s));
    // Random edits: the signature file, the list (signed again), a file.
    for _ in 0..SIGNIFY_RANDOM {
        let m = match rng.gen_range(0..10) {
            0..=3 => {
                let mut s = sig.clone();
                let range = match rng.gen_range(0..3) {
                    0 => 0..c_end + 1,
                    1 => c_end + 1..b_end + 1,
                    _ => 0..s.len(),
                };
                mutate_bytes(rng, &mut s, range);
                let b64 = s.split(|&c| c == b'\n').nth(1).unwrap_or_default();
                match b64.iter().any(u8::is_ascii_whitespace) {
                    true => b.with_sig("sig-base64-space", s),
                    false => b.with_sig("sig-random", s),
                }
            }
            4..=7 => {
                let mut l = list.clone();
                for _ in 0..rng.gen_range(1..3) {
                    let len = l.len();
                    mutate_bytes(rng, &mut l, 0..len);
                }
                let op = match (l.contains(&0), only_spacing(&l)) {
                    (true, _) => "list-nul",
                    (false, true) => "list-random-spacing",
                    (false, false) => "list-random",
                };
                b.with_list(op, l)
            }
            _ => {
                let name = &names[rng.gen_range(0..names.len())];
                let Node::File(mut d) = b.files[name].clone() else {
                    unreachable!()
                };
                let len = d.len();
                mutate_bytes(rng, &mut d, 0..len);
                b.with_file("file-random", name, Node::File(d))
            }
        };
        out.push(m);
    }
    out
}

/// A list our parser would take with its spacing put right: spaces or tabs
/// added or dropped around the separators, a final newline missing.
fn only_spacing(list: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(list) else {
        return false;
    };
    let mut fixed = String::new();
    for line in text.lines() {
        let squeezed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        let Some((name, hex)) = squeezed
            .strip_prefix("SHA256(")
            .and_then(|r| r.rsplit_once(")="))
        else {
            return false;
        };
        fixed.push_str(&format!("SHA256 ({name}) = {hex}\n"));
    }
    fixed.as_bytes() != list && signify::parse_list(fixed.as_bytes()).is_ok()
}

/// Ours: `Ok(None)` accepted, `Ok(Some(r))` refused at a stage signify does
/// not have, `Err(r)` refused at one it has.
fn ours_signify(dir: &Path, key: &PublicKey) -> Result<Option<&'static str>, &'static str> {
    let files = policy::read_dir(dir).map_err(|r| r.reason())?;
    let opts = VerifyOpts {
        now_unix: 0,
        floor: None,
        check_expiry: false,
        links: Vec::new(),
    };
    match policy::verify(&files, std::slice::from_ref(key), &opts, &AcceptAll("nft")) {
        Ok(_) => Ok(None),
        Err(r) if LATER_STAGES.contains(&r.reason()) => Ok(Some(r.reason())),
        // policy.toml not listed at all is a later check; a listed absent file is not.
        Err(Reject::MissingFile { name }) if !is_listed(&files, &name) => Ok(Some("missing-file")),
        Err(r) => Err(r.reason()),
    }
}

fn is_listed(files: &policy::Files, name: &str) -> bool {
    let Some(sig) = files.get("SHA256.sig") else {
        return true;
    };
    let emb = signify::parse_embedded(sig).unwrap();
    signify::parse_list(emb.message).unwrap().contains_key(name)
}

#[test]
fn signify_agrees() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let signify_diffs = table_rows(SIGNIFY_DIFFS);
    let (_tmp, sample) = bundle::sample_bundle(&keys);
    let (keynum, sk) = bundle::signify_secret(&keys);
    let work = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    for name in bundle::content_names(&sample)
        .into_iter()
        .chain(["SHA256.sig".into()])
    {
        files.insert(
            name.clone(),
            Node::File(fs::read(sample.join(&name)).unwrap()),
        );
    }
    let sig = fs::read(sample.join("SHA256.sig")).unwrap();
    let emb = signify::parse_embedded(&sig).unwrap();
    let comment_len = sig.iter().position(|&x| x == b'\n').unwrap() + 1;
    let base = SignifyBase {
        list: emb.message.to_vec(),
        comment: sig[..comment_len].to_vec(),
        keynum,
        sk,
        dir: work.path().join("bundle"),
        outside: work.path().join("outside"),
        files,
    };
    assert_eq!(
        base.sig_for(&base.list),
        sig,
        "in-process signing differs from signify"
    );
    lay_out(&base.outside, &base.files);
    let key = keys.public_key();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mutants = signify_mutants(&base, &mut rng);
    let start = Instant::now();
    let mut tally = Tally::default();
    for m in &mutants {
        lay_out(&base.dir, &m.files);
        let ours = ours_signify(&base.dir, &key);
        let tool = tool_accepts(
            Command::new(SIGNIFY)
                .args(["-C", "-q", "-p"])
                .arg(&keys.pubkey)
                .args(["-x", "SHA256.sig"])
                .current_dir(&base.dir),
        );
        let sig = || match m.files.get("SHA256.sig") {
            Some(Node::File(d)) => format!("{:?}", String::from_utf8_lossy(d)),
            _ => "(not a file)".into(),
        };
        tally.record(&signify_diffs, m.op, ours, tool, sig);
    }
    let secs = start.elapsed().as_secs_f64();
    tally.report("signify", mutants.len(), secs, &signify_diffs);
}

// ----------------------------------------------------------------- minisign

struct MinisignMutant {
    op: &'static str,
    list: Vec<u8>,
    sig: Vec<u8>,
    pubkey: Vec<u8>,
}

fn minisign_mutants(
    list: &[u8],
    hashed: &[u8],
    legacy: &[u8],
    pubkey: &[u8],
    rng: &mut StdRng,
) -> Vec<MinisignMutant> {
    let m = |op, l: &[u8], s: &[u8], p: &[u8]| MinisignMutant {
        op,
        list: l.to_vec(),
        sig: s.to_vec(),
        pubkey: p.to_vec(),
    };
    let mut out = vec![
        m("unchanged", list, hashed, pubkey),
        m("legacy", list, legacy, pubkey),
    ];
    for sig in [hashed, legacy] {
        let legacy_base = sig == legacy;
        let op = |name: &'static str| if legacy_base { "legacy" } else { name };
        let n = lines(sig).len();
        for i in 0..n {
            let mut ls = lines(sig);
            let l = ls.remove(i);
            out.push(m(op("sig-drop-line"), list, &ls.concat(), pubkey));
            let mut ls = lines(sig);
            ls.insert(i, l);
            out.push(m(op("sig-duplicate-line"), list, &ls.concat(), pubkey));
            let edits: &[Edit] = &[
                ("sig-crlf", |l| l.replace('\n', "\r\n")),
                ("sig-trailing-space", |l| l.replace('\n', " \n")),
                ("sig-leading-space", |l| format!(" {l}")),
                ("sig-empty-line", |_| "\n".into()),
                ("sig-blank-line-before", |l| format!("\n{l}")),
            ];
            for (name, f) in edits {
                out.push(m(op(name), list, &set_line(sig, i, f), pubkey));
            }
        }
        out.push(m(
            op("sig-no-final-newline"),
            list,
            &sig[..sig.len() - 1],
            pubkey,
        ));
        out.push(m(
            op("sig-extra-line"),
            list,
            &[sig, b"junk\n"].concat(),
            pubkey,
        ));
        out.push(m(
            op("sig-extra-blank-lines"),
            list,
            &[sig, b"\n\n"].concat(),
            pubkey,
        ));
    }
    // The key id in the public key file.
    let ptext = String::from_utf8(pubkey.to_vec()).unwrap();
    let pline = ptext.lines().nth(1).unwrap();
    let mut raw = B64.decode(pline).unwrap();
    raw[2] ^= 1;
    let other = ptext.replace(pline, &B64.encode(&raw));
    out.push(m("pubkey-other-id", list, hashed, other.as_bytes()));
    for _ in 0..MINISIGN_RANDOM {
        let legacy_base = rng.gen_bool(0.2);
        let sig = if legacy_base { legacy } else { hashed };
        let mut s = sig.to_vec();
        let mut l = list.to_vec();
        let op = match rng.gen_range(0..10) {
            0..=6 => {
                let len = s.len();
                mutate_bytes(rng, &mut s, 0..len);
                match (legacy_base, std::str::from_utf8(&s).is_ok()) {
                    (true, _) => "legacy",
                    (false, false) => "sig-not-utf8",
                    (false, true) if same_when_lenient(&s, sig) => "sig-base64-trailing-bits",
                    (false, true) => "sig-random",
                }
            }
            7..=8 => {
                let len = l.len();
                mutate_bytes(rng, &mut l, 0..len);
                if legacy_base { "legacy" } else { "list-random" }
            }
            _ => {
                let mut p = pubkey.to_vec();
                let len = p.len();
                mutate_bytes(rng, &mut p, 0..len);
                out.push(m("pubkey-random", list, hashed, &p));
                continue;
            }
        };
        out.push(m(op, &l, &s, pubkey));
    }
    out
}

#[test]
fn minisign_agrees() {
    let Some(keys) = TestKeys::minisign() else {
        return;
    };
    let minisign_diffs = table_rows(MINISIGN_DIFFS);
    let (_tmp, dir) = {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        fs::create_dir(&dir).unwrap();
        let files = bundle::sample_files();
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        bundle::make_bundle(&dir, &refs);
        bundle::sign_minisign(&dir, &keys);
        (tmp, dir)
    };
    let list = fs::read(dir.join("SHA256")).unwrap();
    let hashed = fs::read(dir.join("SHA256.minisig")).unwrap();
    let ok = Command::new(MINISIGN)
        .args(["-S", "-l", "-s"])
        .arg(&keys.seckey)
        .args(["-m", "SHA256", "-x", "legacy.minisig"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(ok.status.success(), "minisign -S -l failed");
    let legacy = fs::read(dir.join("legacy.minisig")).unwrap();
    let pubkey = fs::read(&keys.pubkey).unwrap();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mutants = minisign_mutants(&list, &hashed, &legacy, &pubkey, &mut rng);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let start = Instant::now();
    let mut tally = Tally::default();
    for mt in &mutants {
        fs::write(w.join("SHA256"), &mt.list).unwrap();
        fs::write(w.join("SHA256.minisig"), &mt.sig).unwrap();
        fs::write(w.join("key.pub"), &mt.pubkey).unwrap();
        let ours = match std::str::from_utf8(&mt.pubkey)
            .map_err(|_| ())
            .and_then(|t| policy::parse_pubkey(t).map_err(|_| ()))
        {
            Err(()) => Err("bad-pubkey"),
            Ok(k) => policy::minisign::verify(&mt.list, &mt.sig, &[k])
                .map(|_| None)
                .map_err(|r| r.reason()),
        };
        let tool = tool_accepts(
            Command::new(MINISIGN)
                .args([
                    "-V",
                    "-q",
                    "-p",
                    "key.pub",
                    "-m",
                    "SHA256",
                    "-x",
                    "SHA256.minisig",
                ])
                .current_dir(w),
        );
        let detail = || {
            format!(
                "sig {:?} pubkey {:?}",
                String::from_utf8_lossy(&mt.sig),
                String::from_utf8_lossy(&mt.pubkey)
            )
        };
        tally.record(&minisign_diffs, mt.op, ours, tool, detail);
    }
    let secs = start.elapsed().as_secs_f64();
    tally.report("minisign", mutants.len(), secs, &minisign_diffs);
}
