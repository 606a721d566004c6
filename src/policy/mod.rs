//! Signed policy bundles (DESIGN §4).
pub mod params;
