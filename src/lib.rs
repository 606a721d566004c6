//! qkdpfd: a firewall daemon that enforces quantum key distribution.
//!
//! # Layout
//!
//! The module tree follows the process diagram of DESIGN §2: a privileged
//! parent and an unprivileged engine, re-exec'd from one binary, talking over
//! fd 3; `qkdctl` talks to the engine over the control socket.
//!
//! - [`parent`]: the privileged parent: enforcement ([`parent::links`]),
//!   bundle activation, the state file, firewall backends ([`parent::fw`]).
//! - [`engine`]: the unprivileged engine: the pure link state machine
//!   ([`engine::link`]), QBER sources, the control socket server.
//! - [`imsg`]: every parent <-> engine message, its framing and checks.
//! - [`privsep`]: socketpair, re-exec, chroot and privilege drop.
//! - [`proto`]: the control socket protocol (engine <-> qkdctl).
//! - [`conf`]: `qkdpfd.conf`, parsed and checked by the parent.
//! - [`policy`]: signed policy bundles: reading, signatures, digests, parameters, store.
//! - [`ctl`]: the control tool, `qkdctl`, and its `policy verify`.
//! - [`sim`]: the simulated QKD link model.
//! - [`lock`], [`log`], [`duration`], [`utc`], [`secret`]: lock reasons and
//!   bands, the event log helper, durations, UTC dates, key types — shared
//!   by every process.

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
pub mod sandbox;
pub mod secret;
pub mod sim;
pub mod tls;
pub mod utc;
