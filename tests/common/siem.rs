//! The syslog path of a SIEM (issue 12), with real parts: a real `rsyslogd`
//! runs contrib/siem/rsyslog/qkdpfd.conf (output paths and the rulebase's
//! path replaced, nothing else) and receives what qkdpfd sends through
//! syslog(3) to `/dev/log`.
//!
//! This machine has no `/dev/log`, and `/dev` is a devtmpfs shared with the
//! host, where nothing may be created; a Unix socket bound to a path
//! ignores network namespaces. So [`Syslog`] keeps a private mount
//! namespace (`unshare -m`, a `sleep` holds it) whose `/dev` is a small
//! tmpfs with the host's device nodes bound into it; its rsyslogd binds
//! `/dev/log` there, and a daemon started with [`Syslog::command`] (then
//! `ip netns exec` into its gateway) logs to it. One per daemon: each
//! daemon's lines land in its own files.
//!
//! A daemon started here runs without `-d`: it daemonizes, so it is found
//! in /proc by its command line and stopped by pid.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The rsyslog config and rulebase an operator installs.
pub fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/siem/rsyslog")
        .join(name)
}

/// Where each scenario's files go: `QKDPFD_SIEM_LOGS`, else
/// `target/siem-logs` in the source tree (kept after the test).
pub fn logdir() -> PathBuf {
    match std::env::var_os("QKDPFD_SIEM_LOGS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/siem-logs"),
    }
}

/// The shell run by `unshare -m` (propagation slave: what the host unmounts,
/// e.g. a deleted netns, goes here too; nothing done here reaches the
/// host). It builds the new /dev on a tmpfs at $1, moves it over /dev,
/// says `ready` and waits.
const HOLDER: &str = r#"set -eu
d=$1
mount -t tmpfs -o mode=0755,size=1m qkdpfd-siem-dev "$d"
for n in null zero full random urandom tty; do
	: >"$d/$n"
	mount --bind "/dev/$n" "$d/$n"
done
mkdir "$d/net" "$d/pts" "$d/shm"
: >"$d/net/tun"
mount --bind /dev/net/tun "$d/net/tun"
mount --rbind /dev/pts "$d/pts"
mount -t tmpfs -o mode=1777,size=1m shm "$d/shm"
ln -s /proc/self/fd "$d/fd"
ln -s /proc/self/fd/0 "$d/stdin"
ln -s /proc/self/fd/1 "$d/stdout"
ln -s /proc/self/fd/2 "$d/stderr"
mount --move "$d" /dev
echo ready
exec sleep 86400
"#;

/// A private mount namespace whose `/dev/log` is a real rsyslogd's.
pub struct Syslog {
    holder: Child,
    rsyslogd: Option<Child>,
    pub dir: PathBuf,
    pub json: PathBuf,
    pub raw: PathBuf,
}

impl Syslog {
    /// Namespace, config and rsyslogd in `dir`; waits for `/dev/log`.
    pub fn start(dir: &Path) -> Syslog {
        fs::create_dir_all(dir.join("work")).unwrap();
        fs::create_dir_all(dir.join("dev")).unwrap();
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                HOLDER,
                "sh",
            ])
            .arg(dir.join("dev"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = holder.stdout.take().unwrap();
        let mut said = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut said).expect("mount namespace set-up failed");
        assert_eq!(&said, b"ready\n");
        let mut s = Syslog {
            holder,
            rsyslogd: None,
            dir: dir.to_path_buf(),
            json: dir.join("out/qkdpfd.jsonl"),
            raw: dir.join("out/qkdpfd.log"),
        };
        s.write_config();
        let check = s
            .command("rsyslogd")
            .args(["-N1", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "rsyslogd -N1: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        s.run_rsyslogd();
        s
    }

    /// rsyslogd in the foreground with its own config, pid file and work
    /// directory; waits until `/dev/log` is its socket.
    fn run_rsyslogd(&mut self) {
        let dir = &self.dir;
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("rsyslogd.err"))
            .unwrap();
        let child = self
            .command("rsyslogd")
            .args(["-n", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            // Socket activation would replace /dev/log.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.rsyslogd = Some(child);
        let t = Instant::now();
        while !self
            .command("test")
            .args(["-S", "/dev/log"])
            .status()
            .unwrap()
            .success()
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "rsyslogd did not bind /dev/log: {}",
                fs::read_to_string(dir.join("rsyslogd.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills rsyslogd and starts a new one on the same files, as a log
    /// rotation or an upgrade does: a daemon must reconnect to `/dev/log`.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.rsyslogd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.command("rm").args(["-f", "/dev/log"]).status();
        self.run_rsyslogd();
    }

    /// rsyslog.conf: imuxsock on /dev/log (its default socket) without
    /// rate limiting, then contrib's qkdpfd.conf with only its paths changed.
    fn write_config(&self) {
        let d = &self.dir;
        let ours = fs::read_to_string(contrib("qkdpfd.conf")).unwrap();
        let ours = ours
            .replace(
                "/etc/rsyslog.d/qkdpfd.rulebase",
                contrib("qkdpfd.rulebase").to_str().unwrap(),
            )
            .replace("/var/log/qkdpfd/", &format!("{}/out/", d.display()));
        let code = ours.lines().filter(|l| !l.trim_start().starts_with('#'));
        assert!(code.clone().any(|l| l.contains("out/qkdpfd.jsonl")));
        assert!(
            !code
                .into_iter()
                .any(|l| l.contains("/var/log/") || l.contains("/etc/"))
        );
        fs::write(d.join("qkdpfd.conf"), ours).unwrap();
        let main = format!(
            "global(workDirectory=\"{d}/work\")\n\
             module(load=\"imuxsock\" SysSock.Name=\"/dev/log\" SysSock.RateLimit.Interval=\"0\")\n\
             include(file=\"{d}/qkdpfd.conf\")\n",
            d = d.display()
        );
        fs::write(d.join("rsyslog.conf"), main).unwrap();
    }

    /// `PROGRAM` run inside this mount namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--", program]);
        c
    }

    /// Where both files stand when they hold the same number of lines
    /// (rsyslog writes each line to both), so that a scenario's slice of
    /// one matches its slice of the other.
    pub fn mark(&self) -> Mark {
        let t = Instant::now();
        loop {
            let (j, r) = (read(&self.json), read(&self.raw));
            if j.matches('\n').count() == r.matches('\n').count() {
                return Mark {
                    json: j.len(),
                    raw: r.len(),
                };
            }
            assert!(t.elapsed() < Duration::from_secs(5), "rsyslog files differ");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A [`Mark`] once rsyslog has written nothing for half a second (at
    /// most 5 s): what the daemons said by now is in the files, not still
    /// queued to land in the next scenario's slice.
    pub fn settled(&self) -> Mark {
        let t = Instant::now();
        let mut last = self.mark();
        let mut still = Instant::now();
        while still.elapsed() < Duration::from_millis(500) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.mark();
            if (now.json, now.raw) != (last.json, last.raw) {
                last = now;
                still = Instant::now();
            }
        }
        last
    }

    /// Every JSON object written since `from`.
    pub fn since(&self, from: &Mark) -> Vec<serde_json::Value> {
        parse_jsonl(&read(&self.json)[from.json..])
    }

    /// Waits until an object since `from` matches; returns it.
    pub fn wait_for(&self, from: &Mark, want: &Want, limit: Duration) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some(v) = self.since(from).into_iter().find(|v| want.matches(v)) {
                return v;
            }
            assert!(
                t.elapsed() < limit,
                "no {want:?} within {limit:?} in:\n{}",
                &read(&self.raw)[from.raw..]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Copies the lines between two marks to `<dir>/<name>.jsonl` and
    /// `<dir>/<name>.log`; returns the JSON objects.
    pub fn save(&self, dir: &Path, name: &str, from: &Mark, to: &Mark) -> Vec<serde_json::Value> {
        let json = read(&self.json)[from.json..to.json].to_string();
        let raw = read(&self.raw)[from.raw..to.raw].to_string();
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(format!("{name}.jsonl")), &json).unwrap();
        fs::write(dir.join(format!("{name}.log")), &raw).unwrap();
        parse_jsonl(&json)
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.rsyslogd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Byte offsets in the JSON and the raw file.
#[derive(Clone, Debug)]
pub struct Mark {
    json: usize,
    raw: usize,
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

fn parse_jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// An event and some of its fields, as rsyslog's JSON must show them.
#[derive(Clone, Debug)]
pub struct Want {
    pub event: &'static str,
    pub fields: Vec<(&'static str, String)>,
}

pub fn want(event: &'static str, fields: &[(&'static str, &str)]) -> Want {
    Want {
        event,
        fields: fields.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    }
}

impl Want {
    pub fn matches(&self, v: &serde_json::Value) -> bool {
        v["event"] == self.event
            && self
                .fields
                .iter()
                .all(|(k, x)| v[*k].as_str() == Some(x.as_str()))
    }
}

/// The syslog keys rsyslog adds to every object (contrib/siem/rsyslog/).
const META: [&str; 7] = [
    "timestamp",
    "host",
    "program",
    "pid",
    "severity",
    "facility",
    "message",
];

/// The checks every object rsyslog wrote must pass: the syslog fields are
/// there, and the pairs rsyslog parsed are exactly those qkdpfd's own
/// parser (`qkdctl -j monitor`'s) finds in the line.
pub fn check_object(v: &serde_json::Value) {
    let o = v.as_object().unwrap();
    for k in META {
        assert!(o[k].is_string(), "no {k} in {v}");
    }
    assert_eq!(o["program"], "qkdpfd", "{v}");
    assert!(o["pid"].as_str().unwrap().parse::<u32>().is_ok(), "{v}");
    assert_eq!(o["facility"], "daemon", "{v}");
    let message = o["message"].as_str().unwrap();
    // No key in any line: nothing shaped like a WireGuard PSK or key
    // (32 bytes in base64), whatever its field
    // (a base64 padding `=` splits the word: put it back).
    for word in message.split([' ', '"', '=']) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = word.len() == 43 && b64.decode(format!("{word}=")).is_ok_and(|k| k.len() == 32);
        assert!(!key, "a key in a log line: {message}");
    }
    let parsed: serde_json::Map<_, _> = o
        .iter()
        .filter(|(k, _)| !META.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match qkdpfd::ctl::output::event_fields(message) {
        Some(mut want) => {
            // Escaped non-ASCII stays escaped in rsyslog's JSON (qkdpfd.conf).
            if message.contains("\\x8") || message.bytes().any(|b| b >= 0x80) {
                return;
            }
            want.retain(|k, _| !META.contains(&k.as_str()));
            assert_eq!(
                parsed, want,
                "rsyslog's fields differ from the line's: {message}"
            );
            assert!(
                ["parent", "engine"].contains(&o["proc"].as_str().unwrap_or("")),
                "{v}"
            );
        }
        None => assert!(
            parsed.is_empty(),
            "fields from a line that is not an event: {v}"
        ),
    }
}

/// The pid of the running `qkdpfd -f CONF` (the parent, not its engine).
pub fn daemon_pid(conf: &Path) -> Option<u32> {
    let want = [
        super::gateway::BIN_QKDPFD.as_bytes(),
        b"-f",
        conf.as_os_str().as_encoded_bytes(),
    ];
    fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.strip_suffix(b"\0")?.split(|b| *b == 0).collect();
        (args == want).then_some(pid)
    })
}

/// Starts `qkdpfd -f CONF` (no `-d`: syslog, daemonized) in `netns`
/// inside `log`'s mount namespace; waits until it answers on `socket`.
/// Returns the daemon's pid.
pub fn start_daemon(log: &Syslog, netns: &str, conf: &Path, socket: &Path) -> u32 {
    let o = log
        .command("ip")
        .args(["netns", "exec", netns, super::gateway::BIN_QKDPFD, "-f"])
        .arg(conf)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qkdpfd did not start: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t = Instant::now();
    loop {
        let up = Command::new(super::gateway::BIN_QKDCTL)
            .arg("-s")
            .arg(socket)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success());
        if let Some(pid) = daemon_pid(conf).filter(|_| up) {
            return pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "qkdpfd in {netns} does not answer; rsyslog has:\n{}",
            read(&log.raw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then waits until the process is gone.
pub fn stop_daemon(pid: u32) {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    if nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM).is_err() {
        return;
    }
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `contrib/siem/check.py LOGDIR`: must exit 0 ([`run_contrib`]).
pub fn run_checker(dir: &Path) {
    run_contrib("check.py", dir);
}

/// Runs `contrib/siem/SCRIPT ARG` with `QKDPFD_SIEM_PYTHON` (default
/// `target/siem-venv/bin/python3`, made by scripts/siem-venv.sh); must exit
/// 0. Without the script or its Python the step is skipped loudly, except
/// under `CI=true`, where that fails.
pub fn run_contrib(script: &str, arg: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("contrib/siem").join(script);
    let python = std::env::var_os("QKDPFD_SIEM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/siem-venv/bin/python3"));
    let ci = std::env::var("CI").as_deref() == Ok("true");
    for (what, p) in [
        (script.display().to_string(), &script),
        ("the rule checker's Python".to_string(), &python),
    ] {
        if !p.exists() {
            assert!(!ci, "CI=true: {what} ({}) is missing", p.display());
            let msg = format!(
                "!!! SKIPPED: {what} ({}) is missing: rules not checked !!!\n",
                p.display()
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            return;
        }
    }
    let o = Command::new(&python)
        .arg(&script)
        .arg(arg)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{} {}: {}\n{}{}",
        script.display(),
        arg.display(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&o.stdout).trim_end()
    );
}
