//! The privileged parent (DESIGN §2).
