//! qkdsim: a simulated QKD link for demos and tests (the qkdsim process).
//! Thin: argv here, the work in `qkdpfd::sim::{conf, kme, pki}`. The help
//! texts below are what `qkdsim help` prints; man/qkdsim.1 says more.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: qkdsim serve --config FILE [-v]
       qkdsim pki --dir DIR [--kme NAME]... [--sae NAME]... [--host NAME]...
       qkdsim help [serve | pki]";

const HELP: &str = "qkdsim plays a QKD link: ETSI GS QKD 014 key management entities (KMEs)
over mutual TLS that share simulated links, each link's QBER feed and its
eavesdropper, noise and stall controls. Keys accrue at the asymptotic
decoy-state BB84 rate of the link's physics (GYS 2004 parameters unless
configured).

Subcommands:
  serve   run the KMEs, feeds and controls of a config file
  pki     make a test CA and the KME and SAE certificates serve needs
  help    print this text, or a subcommand's (qkdsim help serve)

Options:
  -h, --help   print this text (after a subcommand: that subcommand's)

See qkdsim(1) for the config file, the endpoints and the physics.";

const HELP_SERVE: &str = "usage: qkdsim serve --config FILE [-v]

Serves every [kme.NAME] of FILE on its listen address with mutual TLS until
SIGINT or SIGTERM, and prints `kme NAME listening on ADDR` for each on
stdout. A caller's SAE ID is its client certificate's subject CN. Every
listener also serves each link's QBER feed (/qber/LINK, /metrics and the
ETSI 015-style qkdl_performance) and its controls (POST /sim/LINK/eve,
/sim/LINK/noise, /sim/LINK/stall).

Options:
  --config FILE   the qkdsim config (TOML: [kme.NAME], [link.NAME],
                  [link.NAME.physics], [qber]); relative paths in it are
                  taken from FILE's directory
  -v              log every request to stderr
  -h, --help      print this text";

const HELP_PKI: &str =
    "usage: qkdsim pki --dir DIR [--kme NAME]... [--sae NAME]... [--host NAME]...

Makes, or reuses, a test CA in DIR (ca.pem, ca.key) and signs certificates
with it. Private keys are written mode 0600. For tests and rehearsals only.

Options:
  --dir DIR     where the CA and the certificates go (required)
  --kme NAME    a KME server certificate kme-NAME.pem with its key kme-NAME.key;
                SAN localhost, 127.0.0.1, ::1, NAME and every --host
  --sae NAME    an SAE client certificate sae-NAME.pem (CN = NAME, the SAE ID)
                with its key sae-NAME.key
  --host NAME   one more SAN (host name or address) on every KME certificate
  -h, --help    print this text";

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("qkdsim: {msg}");
    ExitCode::FAILURE
}

fn help(text: &str) -> ExitCode {
    println!("{text}");
    ExitCode::SUCCESS
}

fn is_help(a: &str) -> bool {
    a == "-h" || a == "--help"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("serve") if rest.iter().any(|a| is_help(a)) => help(HELP_SERVE),
        Some("pki") if rest.iter().any(|a| is_help(a)) => help(HELP_PKI),
        Some("serve") => serve(rest),
        Some("pki") => pki(rest),
        Some("help") => match rest {
            [] => help(HELP),
            [s] if s == "serve" => help(HELP_SERVE),
            [s] if s == "pki" => help(HELP_PKI),
            [s] if s == "help" => help(HELP),
            [s] => fail(format!(
                "no help for {s:?}: the subcommands are serve and pki"
            )),
            _ => fail(format!("help takes one subcommand\n{USAGE}")),
        },
        Some(h) if is_help(h) => help(HELP),
        Some(o) if o.starts_with('-') => fail(format!("unknown option {o:?}\n{USAGE}")),
        Some(other) => fail(format!("unknown subcommand {other:?}\n{USAGE}")),
        None => fail(USAGE),
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
            let what = if a.starts_with('-') {
                "option"
            } else {
                "argument"
            };
            return Err(format!("unknown {what} {a:?}\n{USAGE}"));
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
        return fail(format!("serve needs --config FILE\n{USAGE}"));
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
        return fail(format!("pki needs --dir DIR\n{USAGE}"));
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
