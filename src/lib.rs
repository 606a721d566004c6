//! qkdpfd: a firewall daemon that enforces quantum key distribution.
//!
//! # Layout
//!
//! The module tree follows the process diagram of DESIGN §2.
//!
//! - [`lock`]: lock reasons, enforcement states, QBER bands (shared).
//! - [`conf`]: `qkdpfd.conf`, parsed and checked by the parent.
//! - [`policy`]: signed policy bundles: reading, signature and digest checks, parameters.
//! - [`parent`]: the privileged parent: firewall backends, state file.
//! - [`engine`]: the unprivileged engine: link state machine, QBER sources.
//! - [`sim`]: the simulated QKD link model.

pub mod conf;
pub mod ctl;
pub mod duration;
pub mod engine;
pub mod imsg;
pub mod lock;
pub mod log;
pub mod parent;
pub mod policy;
pub mod privsep;
pub mod proto;
pub mod sim;
