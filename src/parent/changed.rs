//! What a handler changed that the engine must hear. Handlers (engine
//! messages, control requests, bundle activation, the tick's checks) return
//! a [`Changed`]; only the loop (`run.rs`) sends it, through `to_engine.rs`.
//!
//! It is a list, not a set: the engine hears these in the order the
//! handler put them, and the parent's own log events (which reach the
//! engine through the same channel) keep their place among them. A link's
//! state and the active policy are read from the parent when sent, right
//! after the handler returns, so they are what the handler left.

use crate::imsg::{CtlReply, KeyAck, ToEngine};
use crate::log;
use crate::proto::ctl::Reply;

/// What to tell the engine, in order.
#[derive(Default)]
#[must_use = "the engine must hear what changed: hand it to the loop"]
pub struct Changed {
    tells: Vec<Tell>,
}

/// One thing to tell the engine.
pub enum Tell {
    /// An already encoded frame: a new config, checked against the
    /// channel's frame limit when it was built (it holds key material).
    Frame(zeroize::Zeroizing<Vec<u8>>),
    /// The active policy (or none).
    Policy,
    /// One link's state as the parent holds it.
    State(String),
    /// Every link's state.
    AllStates,
    /// A message built by the handler (a key acknowledgement, a reply).
    Msg(ToEngine),
    /// A log event that must come after what is listed before it (its line
    /// reaches the engine too, for `qkdctl monitor`).
    Event(log::Record),
}

impl Changed {
    /// Nothing the engine needs to hear.
    pub fn none() -> Changed {
        Changed::default()
    }

    /// An encoded frame (a config) to send as it is.
    pub fn frame(&mut self, f: Vec<u8>) {
        self.tells.push(Tell::Frame(zeroize::Zeroizing::new(f)));
    }

    /// The active policy.
    pub fn policy(&mut self) {
        self.tells.push(Tell::Policy);
    }

    /// One link's state.
    pub fn state(&mut self, link: &str) {
        self.tells.push(Tell::State(link.to_string()));
    }

    /// Every link's state.
    pub fn all_states(&mut self) {
        self.tells.push(Tell::AllStates);
    }

    pub fn key_ack(&mut self, ack: KeyAck) {
        self.tells.push(Tell::Msg(ToEngine::KeyAck(ack)));
    }

    /// The answer to control request `id`.
    pub fn reply(&mut self, id: u64, reply: Reply) {
        self.tells
            .push(Tell::Msg(ToEngine::CtlReply(CtlReply { id, reply })));
    }

    /// A log event, sent (logged) after what is listed so far.
    pub fn event(&mut self, ev: log::Record) {
        self.tells.push(Tell::Event(ev));
    }

    pub fn into_tells(self) -> std::vec::IntoIter<Tell> {
        self.tells.into_iter()
    }
}
