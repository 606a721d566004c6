//! The simulated QKD link: physics model (and, later, a KME pair).
pub mod kme;
pub mod model;
pub mod pki;
pub mod qber;
