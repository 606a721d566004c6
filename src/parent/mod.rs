//! The privileged parent (DESIGN §2).
pub mod fw;
pub mod state;
