//! The state file (DESIGN §4, §6).
