//! Running pfctl(8) and nft(8): one command with its stdin, a hard timeout
//! and an error that names the command, its exit status and its stderr.
//! Shared by the parent's firewall backends and by the ruleset checks that
//! `qkdctl policy verify` runs too (`nft -c`, `pfctl -n`), so that neither
//! needs the other.
//!
//! Commands get no secrets (the WireGuard PSK never passes through here), so
//! their argv and stderr may be logged and shown in errors.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one pfctl/nft invocation may take before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a run whose work grows with the link count may take: the
/// base timeout and 3 ms a link. A load of 10,000 links' chains, or the
/// listing of a table that holds them, takes nft about 2 s on a quiet
/// machine; a slow gateway (or an emulated one) must not see a run
/// killed for the table's size alone.
pub fn timeout_for(links: usize) -> Duration {
    TOOL_TIMEOUT + Duration::from_millis(3 * links as u64)
}

/// Stderr kept in an error: enough for nft's caret diagnostics.
const STDERR_MAX: usize = 4096;

/// A firewall operation that failed: what, the command, its exit status and
/// the tool's own words; or one refused before any command ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwError {
    pub what: String,
    /// The command line, or empty when nothing was run (a refused name or ruleset).
    pub command: String,
    /// "exit status 1", "killed after 10s", "could not start: ..."; empty if nothing ran.
    pub status: String,
    pub stderr: String,
}

impl FwError {
    /// The tool was killed at its timeout (it hung).
    pub fn timed_out(&self) -> bool {
        self.status.starts_with("killed after")
    }

    /// An error found before any command ran.
    pub fn refused(what: impl Into<String>) -> FwError {
        FwError {
            what: what.into(),
            command: String::new(),
            status: String::new(),
            stderr: String::new(),
        }
    }
}

impl fmt::Display for FwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        if !self.command.is_empty() {
            write!(f, ": `{}`", self.command)?;
        }
        if !self.status.is_empty() {
            write!(f, ": {}", self.status)?;
        }
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            write!(f, ": {stderr}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FwError {}

/// What a finished tool said.
#[derive(Debug)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// One command to run: program, arguments, stdin.
#[derive(Clone, Debug)]
pub struct Tool {
    pub argv: Vec<String>,
    pub program: PathBuf,
}

impl Tool {
    pub fn new(program: &Path, args: &[&str]) -> Tool {
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        Tool {
            argv,
            program: program.to_path_buf(),
        }
    }

    /// The command line, for logs and errors.
    pub fn line(&self) -> String {
        self.argv.join(" ")
    }

    /// Runs with `stdin`, kills it after `timeout`; Err unless it exits 0.
    pub fn run(&self, what: &str, stdin: &str, timeout: Duration) -> Result<ToolOutput, FwError> {
        let (stdout, stderr) = self.run_reading(what, stdin, timeout, |r| {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            text(buf)
        })?;
        Ok(ToolOutput { stdout, stderr })
    }

    /// As [`Tool::run`], but hands the tool's stdout to `read` as it comes,
    /// on the calling thread: nft's listing of a 10,000-link table is
    /// 12.8 MB of JSON, which a parser reading the pipe never holds whole.
    /// What `read` leaves unread is drained; its value comes back with the
    /// tool's stderr only if the tool exits 0.
    pub fn run_reading<T>(
        &self,
        what: &str,
        stdin: &str,
        timeout: Duration,
        read: impl FnOnce(&mut dyn Read) -> T,
    ) -> Result<(T, String), FwError> {
        let fail = |status: String, stderr: String| FwError {
            what: what.to_string(),
            command: self.line(),
            status,
            stderr,
        };
        let mut child = Command::new(&self.program)
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .spawn()
            .map_err(|e| fail(format!("could not start: {e}"), String::new()))?;
        // Feed and drain in threads so a chatty tool cannot deadlock us on a
        // full pipe; the threads end when the child's pipes close.
        let mut input = child.stdin.take();
        let data = stdin.as_bytes().to_vec();
        let feeder = std::thread::spawn(move || {
            if let Some(mut w) = input.take() {
                // A tool that exits early closes the pipe: its status tells why.
                let _ = w.write_all(&data);
            }
        });
        let mut out = child.stdout.take();
        let err = drain(child.stderr.take());
        // Wait in a thread so the result arrives the moment the tool exits
        // (a lockdown flip is timed in milliseconds), with a hard timeout
        // that also ends a read of a tool that hangs: killed, its pipe closes.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let watch = std::thread::spawn(move || {
            let (tx, rx) = std::sync::mpsc::channel();
            let waiter = std::thread::spawn(move || {
                let _ = tx.send(child.wait());
            });
            let status = match rx.recv_timeout(timeout) {
                Ok(Ok(st)) => Ok(st),
                Ok(Err(e)) => Err(format!("wait failed: {e}")),
                Err(_) => {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = rx.recv();
                    Err(format!("killed after {}", crate::duration::format(timeout)))
                }
            };
            let _ = waiter.join();
            status
        });
        let value = match out.as_mut() {
            Some(r) => {
                let v = read(r);
                let _ = std::io::copy(r, &mut std::io::sink());
                v
            }
            None => read(&mut std::io::empty()),
        };
        drop(out);
        let status = watch
            .join()
            .unwrap_or_else(|_| Err("wait failed".to_string()));
        let _ = feeder.join();
        let stderr = clip(err.join().unwrap_or_default());
        match status {
            Ok(st) if st.success() => Ok((value, stderr)),
            Ok(st) => Err(fail(describe_status(st), stderr)),
            Err(s) => Err(fail(s, stderr)),
        }
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        text(buf)
    })
}

/// A tool's output as text: kept as read when it is UTF-8 (nft's listing
/// of a 10,000-link table is 12.8 MB; a lossy copy doubled the parent's
/// heap peak), replacement characters otherwise.
fn text(mut buf: Vec<u8>) -> String {
    buf.shrink_to_fit();
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn describe_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "abnormal exit".to_string(),
    }
}

/// Keeps the head of a long stderr (where nft and pfctl put the first error).
fn clip(mut s: String) -> String {
    if s.len() > STDERR_MAX {
        let mut end = STDERR_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" [...]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_over_many_links_gets_time_for_them() {
        assert_eq!(timeout_for(0), TOOL_TIMEOUT);
        // A 2,100-link listing took an emulated 2-core guest 5 s alone and
        // over 10 s beside other tests: the fixed 10 s killed it.
        assert_eq!(timeout_for(2_100), Duration::from_millis(16_300));
        assert_eq!(timeout_for(10_000), Duration::from_secs(40));
    }

    #[test]
    fn output_is_kept_as_read_or_made_valid() {
        assert_eq!(text(b"{\"nftables\": []}".to_vec()), "{\"nftables\": []}");
        assert_eq!(text(b"ab\xffc".to_vec()), "ab\u{fffd}c");
        assert_eq!(text(Vec::new()), "");
    }

    #[test]
    fn error_display_names_command_status_and_stderr() {
        let t = Tool::new(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"]);
        let e = t.run("load link dr", "", TOOL_TIMEOUT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "load link dr: `/bin/sh -c echo oops >&2; exit 3`: exit status 3: oops"
        );
    }

    #[test]
    fn a_reader_gets_the_output_as_it_comes_and_the_timeout_still_holds() {
        // A reader that stops early: the rest is drained, the tool exits 0.
        let t = Tool::new(
            Path::new("/bin/sh"),
            &["-c", "yes | head -c 1000000; echo done >&2"],
        );
        let (first, stderr) = t
            .run_reading("yes", "", TOOL_TIMEOUT, |r| {
                let mut b = [0u8; 4];
                r.read_exact(&mut b).map(|()| b)
            })
            .unwrap();
        assert_eq!(first.unwrap(), *b"y\ny\n");
        assert_eq!(stderr.trim(), "done");
        // A tool that writes, then hangs with its pipe open: killed at the
        // timeout, which ends the read too.
        let t = Tool::new(Path::new("/bin/sh"), &["-c", "echo start; exec sleep 30"]);
        let e = t
            .run_reading("hang", "", Duration::from_millis(200), |r| {
                let mut s = String::new();
                r.read_to_string(&mut s).map(|_| s)
            })
            .unwrap_err();
        assert_eq!(e.status, "killed after 200ms");
        // A tool that fails: its status and stderr, whatever was read.
        let t = Tool::new(
            Path::new("/bin/sh"),
            &["-c", "echo partial; echo no >&2; exit 2"],
        );
        let e = t.run_reading("fail", "", TOOL_TIMEOUT, |_| ()).unwrap_err();
        assert_eq!(
            (e.status.as_str(), e.stderr.trim()),
            ("exit status 2", "no")
        );
    }

    #[test]
    fn tool_feeds_stdin_and_times_out() {
        let t = Tool::new(Path::new("/bin/cat"), &[]);
        let big = "x".repeat(300_000);
        let out = t.run("cat", &big, TOOL_TIMEOUT).unwrap();
        assert_eq!(out.stdout.len(), big.len());
        let t = Tool::new(Path::new("/bin/sleep"), &["30"]);
        let e = t.run("sleep", "", Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.status, "killed after 200ms");
        let t = Tool::new(Path::new("/nonexistent/tool"), &[]);
        let e = t.run("x", "", TOOL_TIMEOUT).unwrap_err();
        assert!(e.status.starts_with("could not start"), "{e}");
    }
}
