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
