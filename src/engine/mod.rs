//! The unprivileged engine (DESIGN §2).
pub mod link;
pub mod qber;
