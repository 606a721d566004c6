//! Firewall backends (DESIGN §5).
