//! `nft -f -` for the benches (included by path).

use std::io::Write;
use std::process::{Child, Command, Stdio};

/// Starts `nft -f -` with `script` on its standard input (closed once
/// written); the caller waits for it.
pub fn spawn_nft(script: &str) -> Child {
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    c
}
