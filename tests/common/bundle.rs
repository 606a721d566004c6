//! Signed policy bundles for integration tests, made with the real tools
//! (`signify-openbsd`, `minisign`, `sha256sum`, `tar`) as an operator would.
//!
//! Missing tools: with `CI=true` the test fails; otherwise it is skipped
//! with a loud message on stderr (the constructors return `None`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

pub const SIGNIFY: &str = "signify-openbsd";
pub const MINISIGN: &str = "minisign";

/// A valid `policy.toml` (DESIGN §4 sample), serial 42, expiring in 2099.
pub const POLICY_TOML: &str = r#"serial = 42
not_after = "2099-01-31T00:00:00Z"

[defaults]
on_qber = "lockdown"
bands = [0.03, 0.05, 0.08, 0.11]
rotate = "300s"
max_key_age = "900s"
qber_lockdown = 0.08
trip_samples = 3
recover_below = 0.05
recover_after = "60s"
unlock = "auto"
qber_timeout = "10s"
peer_timeout = "900s"

[link.dr]
qber_lockdown = 0.06

[rulesets]
open = "anchors/open"
lockdown = "anchors/lockdown"
"#;

/// nft statements for a link's chain in each state.
pub const OPEN_NFT: &str = "accept\n";
pub const LOCKDOWN_NFT: &str = "drop\n";

/// The files of the sample bundle (before signing).
pub fn sample_files() -> Vec<(&'static str, String)> {
    vec![
        ("policy.toml", POLICY_TOML.to_string()),
        ("anchors/open.nft", OPEN_NFT.to_string()),
        ("anchors/lockdown.nft", LOCKDOWN_NFT.to_string()),
    ]
}

/// The sample policy with another serial.
pub fn policy_with_serial(serial: u64) -> String {
    POLICY_TOML.replacen("serial = 42", &format!("serial = {serial}"), 1)
}

/// `true` if `tool` runs. Missing: panics under `CI=true`, else warns.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required (CI=true) but not installed");
        }
        // Straight to fd 2: the test harness would swallow eprintln! of a passing test.
        let msg =
            format!("!!! SKIPPED: {tool} is not installed; install it to run this test !!!\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
    }
    found
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair in its own temporary directory.
pub struct TestKeys {
    pub dir: TempDir,
    pub pubkey: PathBuf,
    pub seckey: PathBuf,
}

impl TestKeys {
    /// `signify-openbsd -G -n` (no passphrase).
    pub fn signify() -> Option<TestKeys> {
        if !require_tool(SIGNIFY) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let pubkey = dir.path().join("key.pub");
        let seckey = dir.path().join("key.sec");
        run(Command::new(SIGNIFY)
            .arg("-G")
            .arg("-n")
            .arg("-p")
            .arg(&pubkey)
            .arg("-s")
            .arg(&seckey));
        Some(TestKeys {
            dir,
            pubkey,
            seckey,
        })
    }

    /// `minisign -G -W` (no password).
    pub fn minisign() -> Option<TestKeys> {
        if !require_tool(MINISIGN) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let pubkey = dir.path().join("key.pub");
        let seckey = dir.path().join("key.sec");
        run(Command::new(MINISIGN)
            .arg("-G")
            .arg("-W")
            .arg("-p")
            .arg(&pubkey)
            .arg("-s")
            .arg(&seckey)
            .stdin(Stdio::null()));
        Some(TestKeys {
            dir,
            pubkey,
            seckey,
        })
    }

    /// The public key as qkdpfd reads it from `[policy] pubkeys`.
    pub fn public_key(&self) -> qkdpfd::policy::PublicKey {
        qkdpfd::policy::read_pubkey(&self.pubkey).unwrap()
    }
}

/// Writes `files` (relative names, subdirectories created) under `dir`.
pub fn make_bundle(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
    }
}

/// Every regular file under `dir` except signature files, sorted, relative.
pub fn content_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir).unwrap() {
        let ent = ent.unwrap();
        let name = ent.file_name().into_string().unwrap();
        let ft = ent.file_type().unwrap();
        if ft.is_dir() {
            for sub in content_names(&ent.path()) {
                out.push(format!("{name}/{sub}"));
            }
        } else if !name.starts_with("SHA256") {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// `sha256sum --tag <files> > SHA256` in `dir`.
fn write_list(dir: &Path) {
    let out = Command::new("sha256sum")
        .arg("--tag")
        .args(content_names(dir))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum failed");
    fs::write(dir.join("SHA256"), out.stdout).unwrap();
}

/// signify: `sha256sum --tag … > SHA256`, `signify -S -e -s key.sec -m
/// SHA256 -x SHA256.sig`, then `SHA256` is removed (it is embedded).
pub fn sign(dir: &Path, keys: &TestKeys) {
    write_list(dir);
    run(Command::new(SIGNIFY)
        .arg("-S")
        .arg("-e")
        .arg("-s")
        .arg(&keys.seckey)
        .args(["-m", "SHA256", "-x", "SHA256.sig"])
        .current_dir(dir));
    fs::remove_file(dir.join("SHA256")).unwrap();
}

/// minisign: `SHA256` plus `minisign -S -m SHA256` → `SHA256.minisig`.
pub fn sign_minisign(dir: &Path, keys: &TestKeys) {
    write_list(dir);
    run(Command::new(MINISIGN)
        .arg("-S")
        .arg("-s")
        .arg(&keys.seckey)
        .args(["-m", "SHA256"])
        .stdin(Stdio::null())
        .current_dir(dir));
}

/// A signed copy of `files` in `<tmp>/bundle`; returns (tmp, bundle dir).
pub fn signed_bundle(keys: &TestKeys, files: &[(&str, &str)]) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    make_bundle(&dir, files);
    sign(&dir, keys);
    (tmp, dir)
}

/// The sample bundle, signed with signify.
pub fn sample_bundle(keys: &TestKeys) -> (TempDir, PathBuf) {
    let files = sample_files();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    signed_bundle(keys, &refs)
}

/// `tar czf - -C dir .` (the GitOps form).
pub fn tgz_of_contents(dir: &Path) -> Vec<u8> {
    tar_out(
        Command::new("tar")
            .arg("czf")
            .arg("-")
            .arg("-C")
            .arg(dir)
            .arg("."),
    )
}

/// `tar czf - bundle/` run in the parent of `dir` (a top-level directory).
pub fn tgz_of_dir(dir: &Path) -> Vec<u8> {
    let name = dir.file_name().unwrap();
    let mut arg = name.to_os_string();
    arg.push("/");
    tar_out(
        Command::new("tar")
            .arg("czf")
            .arg("-")
            .arg(arg)
            .current_dir(dir.parent().unwrap()),
    )
}

fn tar_out(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The keynum and Ed25519 signing key of a signify secret key made with
/// `-G -n` (no passphrase, so the key is stored in the clear): the base64
/// line holds "Ed" ‖ kdfalg[2] ‖ rounds[4] ‖ salt[16] ‖ checksum[8] ‖
/// keynum[8] ‖ seed[32] ‖ public key[32]. Lets a test sign thousands of
/// messages without spawning signify for each.
pub fn signify_secret(keys: &TestKeys) -> ([u8; 8], ed25519_dalek::SigningKey) {
    use base64::Engine as _;
    let text = fs::read_to_string(&keys.seckey).unwrap();
    let line = text.lines().nth(1).expect("a base64 line");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(line)
        .unwrap();
    assert_eq!(raw.len(), 104, "not a signify secret key");
    assert_eq!(&raw[..2], b"Ed");
    assert_eq!(&raw[4..8], &[0; 4], "the key has a passphrase (-n missing)");
    let keynum: [u8; 8] = raw[32..40].try_into().unwrap();
    let seed: [u8; 32] = raw[40..72].try_into().unwrap();
    (keynum, ed25519_dalek::SigningKey::from_bytes(&seed))
}
