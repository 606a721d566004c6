//! qkdctl's command line: the global options (`-s socket`, `-f config`, `-j`)
//! and the command words, matched against token tables as bgpctl's parser.c
//! does. Runs in qkdctl only; pure (no I/O), so every path is unit-tested.
//!
//! Each table lists what may come next; a token either ends the command, is
//! an exact keyword, or captures an argument. A word that fits nowhere is a
//! usage error that names what was expected.

use crate::proto::ctl::{Request, Target};
use std::fmt;
use std::path::PathBuf;

/// What qkdctl was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// A request sent to the daemon as it is.
    Send(Request),
    /// `policy load PATH`: qkdctl reads PATH itself, then sends the bytes.
    PolicyLoad { path: PathBuf },
    /// `policy verify [-p pubkey] PATH`: checked locally, no daemon.
    PolicyVerify {
        pubkey: Option<PathBuf>,
        path: PathBuf,
    },
}

/// The whole command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Invocation {
    pub socket: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub json: bool,
    pub command: Command,
}

pub const USAGE: &str = "usage: qkdctl [-j] [-f config] [-s socket] command [argument ...]";

/// A usage error; qkdctl prints it with [`USAGE`] and exits 2.
#[derive(Clone, Debug, PartialEq)]
pub enum UsageError {
    BadOption(String),
    OptionNeedsValue(char),
    Missing {
        after: String,
        expected: Vec<&'static str>,
    },
    Unknown {
        word: String,
        after: String,
        expected: Vec<&'static str>,
    },
    Extra {
        word: String,
        after: String,
    },
    Invalid {
        word: String,
        what: &'static str,
    },
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::BadOption(o) => write!(f, "unknown option \"{o}\""),
            UsageError::OptionNeedsValue(c) => write!(f, "option -{c} needs an argument"),
            UsageError::Missing { after, expected } => {
                if after.is_empty() {
                    write!(f, "missing command")?;
                } else {
                    write!(f, "missing argument after \"{after}\"")?;
                }
                write_expected(f, expected)
            }
            UsageError::Unknown {
                word,
                after,
                expected,
            } => {
                if after.is_empty() {
                    write!(f, "unknown command \"{word}\"")?;
                } else {
                    write!(f, "unknown argument \"{word}\" after \"{after}\"")?;
                }
                write_expected(f, expected)
            }
            UsageError::Extra { word, after } => {
                write!(
                    f,
                    "unexpected argument \"{word}\": \"{after}\" takes no more"
                )
            }
            UsageError::Invalid { word, what } => write!(f, "invalid \"{word}\": expected {what}"),
        }
    }
}

fn write_expected(f: &mut fmt::Formatter<'_>, expected: &[&str]) -> fmt::Result {
    write!(f, "\nvalid commands/args:")?;
    for e in expected {
        write!(f, "\n  {e}")?;
    }
    Ok(())
}

/// Parses `argv[1..]`: options first (getopt style, stopping at the first
/// word), then the command words.
pub fn parse_args(args: &[String]) -> Result<Invocation, UsageError> {
    let mut socket = None;
    let mut config = None;
    let mut json = false;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--" {
            i += 1;
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            break;
        };
        i += 1;
        for (pos, c) in flags.char_indices() {
            match c {
                'j' => json = true,
                's' | 'f' => {
                    let rest = &flags[pos + 1..];
                    let value = if !rest.is_empty() {
                        rest.to_string()
                    } else {
                        i += 1;
                        args.get(i - 1)
                            .cloned()
                            .ok_or(UsageError::OptionNeedsValue(c))?
                    };
                    let slot = if c == 's' { &mut socket } else { &mut config };
                    *slot = Some(PathBuf::from(value));
                    break;
                }
                _ => return Err(UsageError::BadOption(format!("-{c}"))),
            }
        }
    }
    let words: Vec<&str> = args[i..].iter().map(String::as_str).collect();
    Ok(Invocation {
        socket,
        config,
        json,
        command: parse(&words)?,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    End,
    Keyword(&'static str),
    /// `-f` of `unlock`.
    Force,
    Link,
    Target,
    Fraction,
    Qber,
    Path,
    Pubkey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    None,
    Status,
    ShowLinks,
    ShowLink,
    ShowPolicy,
    Monitor,
    Lockdown,
    Unlock,
    Rotate,
    Reload,
    PolicyLoad,
    PolicyVerify,
    LogVerbose,
    LogBrief,
    SimEve,
    SimNoise,
}

struct Token {
    kind: Kind,
    action: Action,
    next: &'static [Token],
}

const fn tok(kind: Kind, action: Action, next: &'static [Token]) -> Token {
    Token { kind, action, next }
}

use Action as A;
use Kind as K;

const T_END: &[Token] = &[tok(K::End, A::None, &[])];
const T_LINK: &[Token] = &[tok(K::Link, A::None, T_END)];
const T_TARGET: &[Token] = &[tok(K::Target, A::None, T_END)];
const T_PATH: &[Token] = &[tok(K::Path, A::None, T_END)];
const T_PUBKEY: &[Token] = &[tok(K::Pubkey, A::None, T_PATH)];
const T_FRACTION: &[Token] = &[tok(K::Fraction, A::None, T_END)];
const T_QBER: &[Token] = &[tok(K::Qber, A::None, T_END)];

const T_SHOW: &[Token] = &[
    tok(K::Keyword("links"), A::ShowLinks, T_END),
    tok(K::Keyword("link"), A::ShowLink, T_LINK),
    tok(K::Keyword("policy"), A::ShowPolicy, T_END),
];

const T_UNLOCK: &[Token] = &[
    tok(K::Force, A::None, T_TARGET),
    tok(K::Target, A::None, T_END),
];

const T_VERIFY: &[Token] = &[
    tok(K::Keyword("-p"), A::None, T_PUBKEY),
    tok(K::Path, A::None, T_END),
];

const T_POLICY: &[Token] = &[
    tok(K::Keyword("load"), A::PolicyLoad, T_PATH),
    tok(K::Keyword("verify"), A::PolicyVerify, T_VERIFY),
];

const T_LOG: &[Token] = &[
    tok(K::Keyword("verbose"), A::LogVerbose, T_END),
    tok(K::Keyword("brief"), A::LogBrief, T_END),
];

const T_SIM_EVE: &[Token] = &[tok(K::Link, A::None, T_FRACTION)];
const T_SIM_NOISE: &[Token] = &[tok(K::Link, A::None, T_QBER)];
const T_SIM: &[Token] = &[
    tok(K::Keyword("eve"), A::SimEve, T_SIM_EVE),
    tok(K::Keyword("noise"), A::SimNoise, T_SIM_NOISE),
];

const T_MAIN: &[Token] = &[
    tok(K::Keyword("status"), A::Status, T_END),
    tok(K::Keyword("show"), A::None, T_SHOW),
    tok(K::Keyword("monitor"), A::Monitor, T_END),
    tok(K::Keyword("lockdown"), A::Lockdown, T_TARGET),
    tok(K::Keyword("unlock"), A::Unlock, T_UNLOCK),
    tok(K::Keyword("rotate"), A::Rotate, T_TARGET),
    tok(K::Keyword("reload"), A::Reload, T_END),
    tok(K::Keyword("policy"), A::None, T_POLICY),
    tok(K::Keyword("log"), A::None, T_LOG),
    tok(K::Keyword("sim"), A::None, T_SIM),
];

/// What the words said, filled in as tokens match (bgpctl's parse_result).
#[derive(Default)]
struct Parsed {
    action: Option<Action>,
    link: Option<String>,
    target: Option<Target>,
    force: bool,
    value: f64,
    path: Option<PathBuf>,
    pubkey: Option<PathBuf>,
}

/// Parses the command words (after the options).
pub fn parse(words: &[&str]) -> Result<Command, UsageError> {
    let mut table = T_MAIN;
    let mut res = Parsed::default();
    for i in 0..=words.len() {
        let after = words[..i].join(" ");
        let tok = match_token(words.get(i).copied(), table, &mut res, after)?;
        if tok.action != A::None {
            res.action = Some(tok.action);
        }
        if tok.kind == K::End {
            return Ok(res.into_command());
        }
        table = tok.next;
    }
    unreachable!("every table path ends in T_END, matched when the words run out")
}

fn match_token(
    word: Option<&str>,
    table: &'static [Token],
    res: &mut Parsed,
    after: String,
) -> Result<&'static Token, UsageError> {
    let Some(word) = word else {
        return table
            .iter()
            .find(|t| t.kind == K::End)
            .ok_or_else(|| UsageError::Missing {
                after,
                expected: expected(table),
            });
    };
    let mut invalid = None;
    for t in table {
        match take_word(t.kind, word, res) {
            Ok(true) => return Ok(t),
            Ok(false) => {}
            Err(e) => invalid = Some(e),
        }
    }
    if let Some(e) = invalid {
        return Err(e);
    }
    if table.iter().all(|t| t.kind == K::End) {
        return Err(UsageError::Extra {
            word: word.to_string(),
            after,
        });
    }
    Err(UsageError::Unknown {
        word: word.to_string(),
        after,
        expected: expected(table),
    })
}

/// Whether `word` fits token kind `kind`; records what it captures.
fn take_word(kind: Kind, word: &str, res: &mut Parsed) -> Result<bool, UsageError> {
    match kind {
        K::End => Ok(false),
        K::Keyword(k) => Ok(word == k),
        K::Force => {
            res.force = word == "-f";
            Ok(res.force)
        }
        K::Link => {
            res.link = Some(argument(word, "a link name")?);
            Ok(true)
        }
        K::Target => {
            let w = argument(word, "a link name or \"all\"")?;
            res.target = Some(if w == "all" {
                Target::All
            } else {
                Target::Link(w)
            });
            Ok(true)
        }
        K::Fraction => {
            res.value = number(word, 0.0, 1.0, "FRACTION, a number from 0 to 1")?;
            Ok(true)
        }
        K::Qber => {
            res.value = number(word, 0.0, 0.5, "QBER, a number from 0 to 0.5")?;
            Ok(true)
        }
        K::Path => {
            res.path = Some(argument(word, "a path")?.into());
            Ok(true)
        }
        K::Pubkey => {
            res.pubkey = Some(argument(word, "a public key path")?.into());
            Ok(true)
        }
    }
}

/// A free-form argument: a word starting with `-` is a misplaced option
/// (write `./-x` for such a path), and control characters never belong.
fn argument(word: &str, what: &'static str) -> Result<String, UsageError> {
    if word.is_empty() || word.starts_with('-') || word.chars().any(char::is_control) {
        return Err(UsageError::Invalid {
            word: word.escape_debug().to_string(),
            what,
        });
    }
    Ok(word.to_string())
}

fn number(word: &str, lo: f64, hi: f64, what: &'static str) -> Result<f64, UsageError> {
    match word.parse::<f64>() {
        // `contains` is false for NaN, so "nan" is refused too.
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(UsageError::Invalid {
            word: word.escape_debug().to_string(),
            what,
        }),
    }
}

fn expected(table: &[Token]) -> Vec<&'static str> {
    table
        .iter()
        .filter_map(|t| match t.kind {
            K::End => None,
            K::Keyword(k) => Some(k),
            K::Force => Some("-f"),
            K::Link => Some("LINK"),
            K::Target => Some("LINK|all"),
            K::Fraction => Some("FRACTION (0..1)"),
            K::Qber => Some("QBER (0..0.5)"),
            K::Path => Some("PATH"),
            K::Pubkey => Some("PUBKEY"),
        })
        .collect()
}

impl Parsed {
    fn into_command(self) -> Command {
        let link = || self.link.clone().unwrap_or_default();
        let target = || self.target.clone().unwrap_or(Target::All);
        let path = || self.path.clone().unwrap_or_default();
        let req = match self.action.unwrap_or(A::None) {
            A::Status => Request::Status,
            A::ShowLinks => Request::ShowLinks,
            A::ShowLink => Request::ShowLink { link: link() },
            A::ShowPolicy => Request::ShowPolicy,
            A::Monitor => Request::Monitor,
            A::Lockdown => Request::Lockdown { target: target() },
            A::Unlock => Request::Unlock {
                target: target(),
                force: self.force,
            },
            A::Rotate => Request::Rotate { target: target() },
            A::Reload => Request::Reload,
            A::LogVerbose => Request::Log { verbose: true },
            A::LogBrief => Request::Log { verbose: false },
            A::SimEve => Request::SimEve {
                link: link(),
                fraction: self.value,
            },
            A::SimNoise => Request::SimNoise {
                link: link(),
                qber: self.value,
            },
            A::PolicyLoad => return Command::PolicyLoad { path: path() },
            A::PolicyVerify => {
                return Command::PolicyVerify {
                    pubkey: self.pubkey.clone(),
                    path: path(),
                };
            }
            A::None => unreachable!("every path to T_END passes a token with an action"),
        };
        Command::Send(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, UsageError> {
        let words: Vec<&str> = s.split_whitespace().collect();
        parse(&words)
    }

    fn send(s: &str) -> Request {
        match p(s) {
            Ok(Command::Send(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn link(s: &str) -> Target {
        Target::Link(s.to_string())
    }

    #[test]
    fn every_command() {
        assert_eq!(send("status"), Request::Status);
        assert_eq!(send("show links"), Request::ShowLinks);
        assert_eq!(
            send("show link dr"),
            Request::ShowLink { link: "dr".into() }
        );
        assert_eq!(send("show policy"), Request::ShowPolicy);
        assert_eq!(send("monitor"), Request::Monitor);
        assert_eq!(
            send("lockdown all"),
            Request::Lockdown {
                target: Target::All
            }
        );
        assert_eq!(
            send("lockdown dr"),
            Request::Lockdown { target: link("dr") }
        );
        assert_eq!(
            send("unlock dr"),
            Request::Unlock {
                target: link("dr"),
                force: false
            }
        );
        assert_eq!(
            send("unlock -f all"),
            Request::Unlock {
                target: Target::All,
                force: true
            }
        );
        assert_eq!(send("reload"), Request::Reload);
        assert_eq!(send("log verbose"), Request::Log { verbose: true });
        assert_eq!(send("log brief"), Request::Log { verbose: false });
        assert_eq!(
            send("sim eve dr 0.25"),
            Request::SimEve {
                link: "dr".into(),
                fraction: 0.25
            }
        );
        assert_eq!(
            send("sim noise dr 0.5"),
            Request::SimNoise {
                link: "dr".into(),
                qber: 0.5
            }
        );
        assert_eq!(
            p("policy load /tmp/b").unwrap(),
            Command::PolicyLoad {
                path: "/tmp/b".into()
            }
        );
        assert_eq!(
            p("policy verify b.tgz").unwrap(),
            Command::PolicyVerify {
                pubkey: None,
                path: "b.tgz".into()
            }
        );
        assert_eq!(
            p("policy verify -p k.pub b").unwrap(),
            Command::PolicyVerify {
                pubkey: Some("k.pub".into()),
                path: "b".into()
            }
        );
    }

    #[test]
    fn missing_names_what_was_expected() {
        let e = p("").unwrap_err();
        assert!(matches!(&e, UsageError::Missing { after, expected }
            if after.is_empty() && expected.contains(&"status") && expected.contains(&"sim")));
        let e = p("show").unwrap_err();
        assert_eq!(
            e,
            UsageError::Missing {
                after: "show".into(),
                expected: vec!["links", "link", "policy"]
            }
        );
        assert!(e.to_string().contains("missing argument after \"show\""));
        assert!(e.to_string().contains("\n  links"));
        let e = p("sim eve dr").unwrap_err();
        assert!(matches!(&e, UsageError::Missing { after, expected }
            if after == "sim eve dr" && expected == &vec!["FRACTION (0..1)"]));
        let e = p("unlock").unwrap_err();
        assert!(matches!(&e, UsageError::Missing { expected, .. }
            if expected == &vec!["-f", "LINK|all"]));
        assert!(matches!(
            p("policy verify -p k"),
            Err(UsageError::Missing { .. })
        ));
    }

    #[test]
    fn unknown_and_extra_words() {
        assert!(
            matches!(p("rotat all"), Err(UsageError::Unknown { word, after, .. })
            if word == "rotat" && after.is_empty())
        );
        assert_eq!(
            p("rotate all"),
            Ok(Command::Send(Request::Rotate {
                target: Target::All
            }))
        );
        assert!(matches!(p("rotate"), Err(UsageError::Missing { .. })));
        // Exact words only: no abbreviations.
        assert!(matches!(p("sh links"), Err(UsageError::Unknown { .. })));
        assert!(
            matches!(p("show lnks"), Err(UsageError::Unknown { word, after, .. })
            if word == "lnks" && after == "show")
        );
        assert!(matches!(p("log loud"), Err(UsageError::Unknown { .. })));
        assert!(
            matches!(p("status now"), Err(UsageError::Extra { word, after })
            if word == "now" && after == "status")
        );
        assert!(matches!(p("show link dr x"), Err(UsageError::Extra { .. })));
        assert!(matches!(p("unlock -f dr x"), Err(UsageError::Extra { .. })));
    }

    #[test]
    fn invalid_values() {
        for bad in [
            "sim eve dr 1.5",
            "sim eve dr -0.1",
            "sim eve dr nan",
            "sim eve dr x",
            "sim noise dr 0.51",
            "sim noise dr inf",
            "lockdown -x",
            "unlock -f -f",
            "show link -a",
            "policy load -",
        ] {
            assert!(matches!(p(bad), Err(UsageError::Invalid { .. })), "{bad}");
        }
        let e = p("sim eve dr 2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid \"2\": expected FRACTION, a number from 0 to 1"
        );
        assert_eq!(
            send("sim eve dr 1"),
            Request::SimEve {
                link: "dr".into(),
                fraction: 1.0
            }
        );
        assert_eq!(
            send("sim noise dr 0"),
            Request::SimNoise {
                link: "dr".into(),
                qber: 0.0
            }
        );
    }

    fn args(s: &str) -> Result<Invocation, UsageError> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse_args(&v)
    }

    #[test]
    fn options() {
        let i = args("-j -s /s -f /c status").unwrap();
        assert_eq!(i.socket, Some("/s".into()));
        assert_eq!(i.config, Some("/c".into()));
        assert!(i.json);
        let i = args("-js/s show links").unwrap();
        assert!(i.json);
        assert_eq!(i.socket, Some("/s".into()));
        assert_eq!(i.command, Command::Send(Request::ShowLinks));
        let i = args("status").unwrap();
        assert_eq!((i.socket, i.config, i.json), (None, None, false));
        // Options stop at the first word: `-f` after `unlock` is unlock's.
        let i = args("unlock -f dr").unwrap();
        assert_eq!(i.config, None);
        assert!(matches!(
            i.command,
            Command::Send(Request::Unlock { force: true, .. })
        ));
        let i = args("-- status").unwrap();
        assert_eq!(i.command, Command::Send(Request::Status));
        assert_eq!(
            args("-x status").unwrap_err(),
            UsageError::BadOption("-x".into())
        );
        assert_eq!(args("-s").unwrap_err(), UsageError::OptionNeedsValue('s'));
    }
}
