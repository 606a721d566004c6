//! Why a bundle was refused. Built by every stage of the bundle pipeline (in
//! the parent and in `qkdctl policy verify`); logged as `policy_rejected
//! reason=<code>` and shown to the operator through its `Display`.
//!
//! The reason codes are a stable interface (logs, SIEM rules, qkdctl JSON):
//! never rename one.

use std::fmt;

/// One failed check. `Display` names the check and the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// A file name outside `^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?$`, a `.`/`..`
    /// component, an absolute path, a duplicate or a directory nested too deep.
    BadName { name: String, why: String },
    /// A symlink, hard link, device, fifo or socket.
    NotRegular { name: String, kind: String },
    /// A limit on entries, per-file or total size.
    TooLarge { what: String },
    /// The bundle could not be read (I/O error, corrupt gzip or tar).
    Unreadable { what: String, msg: String },
    /// Neither `SHA256.sig` nor `SHA256.minisig` is present.
    NoSignature,
    /// A malformed signature file or one that does not verify.
    BadSignature { file: String, msg: String },
    /// Signed by a key (keynum) that is not configured.
    UnknownSigner { file: String, keynum: String },
    /// The signed list is malformed, or a `SHA256` differs from it.
    BadList { line: usize, msg: String },
    /// A listed (or required) file is absent.
    MissingFile { name: String },
    /// A file that is neither listed nor a signature file.
    ExtraFile { name: String },
    /// A file whose SHA-256 differs from its entry.
    DigestMismatch { name: String },
    /// `policy.toml` does not parse: syntax, types, unknown keys (`line:col: msg` each).
    PolicySyntax { errors: Vec<String> },
    /// `policy.toml` parses but its values are inconsistent.
    PolicyInvalid { errors: Vec<String> },
    /// `not_after` has passed.
    Expired { not_after: String, now: String },
    /// The serial is not above the active one (or equal with other content).
    Rollback {
        serial: u64,
        active: u64,
        same_serial: bool,
    },
    /// `[rulesets]` names a file absent from the bundle.
    RulesetMissing { name: String },
    /// The firewall backend refused a ruleset.
    RulesetCheck {
        link: String,
        state: String,
        file: String,
        msg: String,
    },
}

impl Reject {
    /// The stable reason code (`policy_rejected reason=…`).
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadName { .. } => "bad-name",
            Reject::NotRegular { .. } => "not-regular",
            Reject::TooLarge { .. } => "too-large",
            Reject::Unreadable { .. } => "unreadable",
            Reject::NoSignature => "no-signature",
            Reject::BadSignature { .. } => "bad-signature",
            Reject::UnknownSigner { .. } => "unknown-signer",
            Reject::BadList { .. } => "bad-list",
            Reject::MissingFile { .. } => "missing-file",
            Reject::ExtraFile { .. } => "extra-file",
            Reject::DigestMismatch { .. } => "digest-mismatch",
            Reject::PolicySyntax { .. } => "policy-syntax",
            Reject::PolicyInvalid { .. } => "policy-invalid",
            Reject::Expired { .. } => "expired",
            Reject::Rollback { .. } => "rollback",
            Reject::RulesetMissing { .. } => "ruleset-missing",
            Reject::RulesetCheck { .. } => "ruleset-check",
        }
    }

    pub(crate) fn bad_name(name: &str, why: &str) -> Reject {
        Reject::BadName {
            name: printable(name),
            why: why.to_string(),
        }
    }

    pub(crate) fn too_large(what: impl Into<String>) -> Reject {
        Reject::TooLarge { what: what.into() }
    }

    pub(crate) fn bad_sig(file: &str, msg: impl Into<String>) -> Reject {
        Reject::BadSignature {
            file: file.to_string(),
            msg: msg.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::BadName { name, why } => write!(f, "name: \"{name}\" {why}"),
            Reject::NotRegular { name, kind } => {
                write!(
                    f,
                    "file type: {name} is a {kind}, only regular files are allowed"
                )
            }
            Reject::TooLarge { what } => write!(f, "limits: {what}"),
            Reject::Unreadable { what, msg } => write!(f, "read: {what}: {msg}"),
            Reject::NoSignature => {
                f.write_str("signature: neither SHA256.sig nor SHA256 + SHA256.minisig is present")
            }
            Reject::BadSignature { file, msg } => write!(f, "signature: {file}: {msg}"),
            Reject::UnknownSigner { file, keynum } => write!(
                f,
                "signature: {file} is not signed by any configured key (key id {keynum})"
            ),
            Reject::BadList { line: 0, msg } => write!(f, "list: {msg}"),
            Reject::BadList { line, msg } => {
                write!(f, "list: signed SHA256 list line {line}: {msg}")
            }
            Reject::MissingFile { name } => write!(f, "files: {name} is listed but missing"),
            Reject::ExtraFile { name } => {
                write!(f, "files: {name} is not in the signed list")
            }
            Reject::DigestMismatch { name } => {
                write!(f, "digest: {name} does not match its SHA256 entry")
            }
            Reject::PolicySyntax { errors } => write!(f, "policy: {}", errors.join("; ")),
            Reject::PolicyInvalid { errors } => write!(f, "policy: {}", errors.join("; ")),
            Reject::Expired { not_after, now } => write!(
                f,
                "expiry: policy.toml not_after {not_after} has passed (now {now})"
            ),
            Reject::Rollback {
                serial,
                same_serial: true,
                ..
            } => write!(
                f,
                "serial: serial {serial} is already active with different content"
            ),
            Reject::Rollback { serial, active, .. } => {
                write!(
                    f,
                    "serial: serial {serial} is not greater than active {active}"
                )
            }
            Reject::RulesetMissing { name } => {
                write!(
                    f,
                    "rulesets: {name} is named in policy.toml but not in the bundle"
                )
            }
            Reject::RulesetCheck {
                link,
                state,
                file,
                msg,
            } => write!(
                f,
                "ruleset: {file} for link {link} ({state}) fails the firewall check: {msg}"
            ),
        }
    }
}

impl std::error::Error for Reject {}

/// Names from an archive are untrusted: show them escaped and bounded.
pub(crate) fn printable(s: &str) -> String {
    crate::text::printable(s, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_check_and_file() {
        let r = Reject::DigestMismatch {
            name: "anchors/open.nft".into(),
        };
        assert_eq!(r.reason(), "digest-mismatch");
        assert_eq!(
            r.to_string(),
            "digest: anchors/open.nft does not match its SHA256 entry"
        );
        let r = Reject::Rollback {
            serial: 41,
            active: 42,
            same_serial: false,
        };
        assert_eq!(
            r.to_string(),
            "serial: serial 41 is not greater than active 42"
        );
        assert_eq!(printable("a\nb"), "a\\x0ab");
    }
}
