//! What a bench reads from its environment, and the root check the
//! kernel benches share.

#![allow(dead_code)]

/// `name` as a number, or `default` when unset or not a number.
pub fn usize_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `name` as a comma-separated list of numbers (`100,10000`), or
/// `default` in the same form.
pub fn sizes_or(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Whether we run as root; says what `bench` needs it for when not.
pub fn root(bench: &str, needs: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("{bench} bench: needs root ({needs})");
    }
    root
}
