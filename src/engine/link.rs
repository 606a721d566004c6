//! Per-link state machine (DESIGN §6).
