//! A QBER source that misbehaves, through the running daemon (fail-closed
//! issue, item 7: "QBER source stalled, garbage, out of range"): an
//! `http-json` source served by this test inside the gateway answers
//! garbage, values outside [0, 1], or accepts the connection and never
//! answers. Each time the link must lock (0 pings, its chain read back
//! locked) and reopen only once good readings return; nothing the source
//! says may open it.
#![cfg(target_os = "linux")]

mod common;

use common::flood::in_netns;
use common::gateway::Gateway;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

const GOOD: u8 = 0;
const GARBAGE: u8 = 1;
const ABOVE_ONE: u8 = 2;
const NEGATIVE: u8 = 3;
const STALL: u8 = 4;

/// The source: one answer per connection, chosen by `mode`.
fn serve(ns: &str, mode: Arc<AtomicU8>) {
    let (tx, rx) = std::sync::mpsc::channel();
    // Each answer carries a new `seq`: a source repeating itself is stale
    // (the driver's freshness rule), which is not what is tested here.
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
    in_netns(ns, move || {
        let l = std::net::TcpListener::bind("127.0.0.1:8099").unwrap();
        tx.send(()).unwrap();
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mode = mode.clone();
            let n = seq.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                // Chosen when the request is in: a client may open its
                // connection before it asks.
                let body = match mode.load(Ordering::SeqCst) {
                    GOOD => format!("{{\"qber\": 0.02, \"seq\": {n}}}"),
                    GARBAGE => "<html>not a reading</html>".to_string(),
                    ABOVE_ONE => format!("{{\"qber\": 1.7, \"seq\": {n}}}"),
                    NEGATIVE => format!("{{\"qber\": -0.2, \"seq\": {n}}}"),
                    _ => {
                        // Accepted, read, never answered.
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    rx.recv().unwrap();
}

#[test]
fn garbage_out_of_range_and_stalled_sources_lock_and_never_open() {
    let Some(mut gw) = Gateway::new("qqf1", "200ms", "") else {
        return;
    };
    let mode = Arc::new(AtomicU8::new(GOOD));
    serve(&gw.ns_a(), mode.clone());
    gw.set_qber(
        "[qber.net]\ndriver = \"http-json\"\nurl = \"http://127.0.0.1:8099/qber\"\n\
         pointer = \"/qber\"\npoll = \"200ms\"",
        "dr",
    );
    gw.start_open();
    assert_eq!(gw.pings(3), 3);
    for (bad, what) in [
        (GARBAGE, "garbage"),
        (ABOVE_ONE, "qber 1.7"),
        (NEGATIVE, "qber -0.2"),
        (STALL, "stalled"),
    ] {
        mode.store(bad, Ordering::SeqCst);
        // qber_timeout is 3 s: locked within it and a poll or two.
        gw.wait_state("lockdown", Duration::from_secs(6));
        assert_eq!(gw.pings(3), 0, "{what}: packets crossed");
        assert!(gw.link_locked("dr"), "{what}");
        // Still locked a while later: nothing it says opens the link.
        std::thread::sleep(Duration::from_secs(2));
        let show = gw.ctl_ok(&["show", "link", "dr"]);
        assert!(show.contains("lockdown"), "{what}: {show}");
        mode.store(GOOD, Ordering::SeqCst);
        gw.wait_state("open", Duration::from_secs(12));
    }
    let log = gw.log();
    assert!(log.contains("event=qber_source_error"), "{log}");
}
