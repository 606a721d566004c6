//! qkdsim: a simulated QKD link for demos and tests (the qkdsim process).
//! Thin: argv here, the work in `qkdpfd::sim::{conf, kme, pki}`.
//!
//!     qkdsim serve --config FILE [-v]
//!         serve the config's ETSI 014 KMEs over mutual TLS until SIGINT/SIGTERM;
//!         prints `kme NAME listening on ADDR` for each KME on stdout; a
//!         caller's SAE ID is its client certificate's subject CN
//!     qkdsim pki --dir DIR [--kme NAME]... [--sae NAME]... [--host NAME]...
//!         make (or reuse) a test CA in DIR and sign KME server certificates
//!         (SAN localhost, 127.0.0.1, ::1, NAME, each --host) and SAE client
//!         certificates (CN = the SAE ID); keys are written mode 0600

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: qkdsim serve --config FILE [-v]\n       \
                     qkdsim pki --dir DIR [--kme NAME]... [--sae NAME]... [--host NAME]...";

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("qkdsim: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("pki") => pki(&args[1..]),
        _ => fail(USAGE),
    }
}

/// `--flag VALUE` pairs and bare flags, each checked against `known`.
fn options(
    args: &[String],
    known: &[&str],
    bare: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if bare.contains(&a.as_str()) {
            out.push((a.clone(), String::new()));
        } else if known.contains(&a.as_str()) {
            let v = it.next().ok_or(format!("{a} needs a value\n{USAGE}"))?;
            out.push((a.clone(), v.clone()));
        } else {
            return Err(format!("unknown argument {a:?}\n{USAGE}"));
        }
    }
    Ok(out)
}

fn serve(args: &[String]) -> ExitCode {
    let opts = match options(args, &["--config"], &["-v"]) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let Some(path) = opts
        .iter()
        .find(|o| o.0 == "--config")
        .map(|o| PathBuf::from(&o.1))
    else {
        return fail(USAGE);
    };
    qkdpfd::log::set_verbose(opts.iter().any(|o| o.0 == "-v"));
    let cfg = match qkdpfd::sim::conf::SimConfig::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    rt.block_on(async {
        let sim = match qkdpfd::sim::kme::bind(&cfg).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        for (name, addr) in sim.addrs() {
            println!("kme {name} listening on {addr}");
        }
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            _ => return fail("cannot install signal handlers"),
        };
        sim.run(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        })
        .await;
        ExitCode::SUCCESS
    })
}

fn pki(args: &[String]) -> ExitCode {
    let opts = match options(args, &["--dir", "--kme", "--sae", "--host"], &[]) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let all = |k: &str| -> Vec<String> {
        opts.iter()
            .filter(|o| o.0 == k)
            .map(|o| o.1.clone())
            .collect()
    };
    let Some(dir) = all("--dir").pop() else {
        return fail(USAGE);
    };
    match qkdpfd::sim::pki::create(
        &PathBuf::from(dir),
        &all("--kme"),
        &all("--sae"),
        &all("--host"),
    ) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
