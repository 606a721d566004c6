//! Signed policy bundles (DESIGN §4). Run by the parent (load, activation) and
//! by `qkdctl policy verify`; nothing here talks to the kernel.
//!
//! The pipeline, in the order a bundle meets it:
//! - [`bundle`]: a directory or (gzip'd) tar read into memory with hard limits;
//! - [`signify`]: public keys, signify signatures and the `SHA256` list;
//! - [`minisign`]: the `SHA256` + `SHA256.minisig` alternative;
//! - [`document`]: `policy.toml` to a checked [`Policy`];
//! - [`verify`]: every check, in order, before anything changes;
//! - [`store`]: the immutable `<dir>/<serial>/` copies of activated bundles.
//!
//! Each failure is a [`Reject`] with a stable reason code.
pub mod bundle;
pub mod document;
pub mod minisign;
pub mod params;
pub mod reject;
pub mod signify;
pub mod store;
pub mod verify;

pub use bundle::{Files, read_archive_file, read_bytes, read_dir};
pub use document::{ExpiredAction, Policy, Rulesets};
pub use reject::Reject;
pub use signify::{PublicKey, parse_pubkey, read_pubkey};
pub use store::Store;
pub use verify::{AcceptAll, Bundle, Floor, RulesetChecker, Verified, VerifyOpts, verify};
