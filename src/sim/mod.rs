//! The simulated QKD link (qkdsim, and the engine's `sim` QBER driver):
//! the physics model ([`model`]) and the secret key rate it allows
//! ([`keyrate`]), qkdsim's config ([`conf`]), its links ([`link`]: key pool
//! and QBER measurement clock), its ETSI 014 KMEs ([`kme`]), QBER feed
//! ([`qber`]) and PKI ([`pki`]).
pub mod conf;
pub mod keyrate;
pub mod kme;
pub mod link;
pub mod model;
pub mod pki;
pub mod qber;
