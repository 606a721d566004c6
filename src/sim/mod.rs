//! The simulated QKD link (physics model, later a KME pair).
