//! qkdpfd: argv only. No runtime and no thread is started here; the parent
//! and the engine each build their own after the process split.

use qkdpfd::parent::Opts;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: qkdpfd [-BdLnv] [-f file]";

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = PathBuf::from(args.next().unwrap_or_default());
    let rest: Vec<OsString> = args.collect();
    let mut opts = Opts {
        argv0,
        ..Opts::default()
    };
    let mut process: Option<String> = None;
    let mut it = rest.iter();
    let mut passed = Vec::new();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { return usage() };
        if !s.starts_with('-') || s.len() < 2 {
            return usage();
        }
        let flags: Vec<char> = s[1..].chars().collect();
        let mut i = 0;
        while i < flags.len() {
            match flags[i] {
                'B' => opts.boot = true,
                'd' => opts.foreground = true,
                'L' => opts.lockdown = true,
                'n' => opts.check = true,
                'v' => opts.verbose = opts.verbose.saturating_add(1),
                c @ ('f' | 'P') => {
                    // The value is the rest of this word or the next word.
                    let rest: String = flags[i + 1..].iter().collect();
                    let v = if rest.is_empty() {
                        match it.next().and_then(|v| v.to_str()) {
                            Some(v) => v.to_string(),
                            None => return usage(),
                        }
                    } else {
                        rest
                    };
                    if c == 'f' {
                        opts.config = Some(PathBuf::from(&v));
                        passed.push(OsString::from("-f"));
                        passed.push(OsString::from(v));
                    } else {
                        process = Some(v);
                    }
                    i = flags.len();
                    continue;
                }
                _ => return usage(),
            }
            i += 1;
        }
    }
    if opts.verbose > 0 {
        passed.push(OsString::from("-v"));
    }
    if opts.foreground {
        passed.push(OsString::from("-d"));
    }
    opts.args = passed;
    match process.as_deref() {
        None => qkdpfd::parent::main(opts),
        Some("engine") => qkdpfd::engine::main(),
        Some("guardian") => qkdpfd::parent::guardian_main(opts),
        Some(_) => usage(),
    }
}
