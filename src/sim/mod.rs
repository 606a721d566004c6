//! The simulated QKD link: physics model (and, later, a KME pair).
pub mod model;
