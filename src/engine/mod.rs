//! The unprivileged engine (DESIGN §2).
