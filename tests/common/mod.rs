//! Helpers shared by the integration tests. Each test crate uses a subset.
#![allow(dead_code)]

pub mod bundle;
pub mod differential;
#[cfg(target_os = "linux")]
pub mod flood;
pub mod gateway;
pub mod nft;
pub mod pair;
pub mod procfs;
#[cfg(target_os = "linux")]
pub mod siem;
pub mod sim;

/// What a restart would read from a state file: the file with the journal
/// beside it replayed, as JSON text ("" when there is neither).
pub fn durable_state(state_file: &std::path::Path) -> String {
    match qkdpfd::state::load(state_file).unwrap() {
        Some(st) => serde_json::to_string_pretty(&st).unwrap(),
        None => String::new(),
    }
}
