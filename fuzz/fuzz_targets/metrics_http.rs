//! The metrics endpoint's HTTP handling: any bytes a monitoring network
//! could send on one connection, served by the same code as a TCP client
//! (hyper with the endpoint's limits) over an in-memory pipe, on a paused
//! clock so the timeouts fire at once. The answer is always one HTTP
//! response (1.1, or 1.0 to a 1.0 request) with a status the endpoint can give; data (200) only for a
//! GET of /metrics, and never an answer larger than the page it renders.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::metrics::Snapshot;
use qkdpfd::engine::metrics::http::{Limits, serve_connection};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The path of a request target: origin form (`/metrics?x`) or absolute
/// form (`http://host/metrics`).
fn path_of(target: &str) -> &str {
    let rest = match target.split_once("://") {
        Some((_, after)) => after.find('/').map_or("", |i| &after[i..]),
        None => target,
    };
    rest.split(['?', '#']).next().unwrap_or("")
}

thread_local! {
    /// One runtime for every input (building one is most of an input's
    /// cost); each input's connection task ends before the next starts.
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(32 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let answer = RT.with(|rt| rt.block_on(async {
            let mut snap = Snapshot::empty(1_800_000_000, Instant::now());
            snap.policy_serial = Some(7);
            let (_tx, rx) = tokio::sync::watch::channel(snap);
            let limits = Limits {
                max_connections: 1,
                header_timeout: Duration::from_secs(5),
                connection_timeout: Duration::from_secs(15),
            };
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let task = tokio::spawn(serve_connection(server, rx, limits));
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            task.await.expect("the connection task never panics");
            answer
        }));
        if std::env::var_os("QKDPFD_FUZZ_HEAP").is_some() {
            eprintln!("heap peak/live: {:?}", qkdpfd_fuzz::heap());
        }
        if answer.is_empty() {
            return; // hyper closed without answering (nothing it could parse)
        }
        assert!(answer.len() <= 64 * 1024, "an answer of {} bytes", answer.len());
        let status = std::str::from_utf8(&answer[..answer.len().min(12)])
            .ok()
            .and_then(|s| s.strip_prefix("HTTP/1.1 ").or_else(|| s.strip_prefix("HTTP/1.0 ")))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&answer)));
        assert!(
            [200, 400, 404, 405, 408, 413, 414, 431, 501, 505].contains(&status),
            "status {status}"
        );
        if status == 200 {
            // RFC 9112 §2.2: empty lines before the request line are ignored.
            let request = String::from_utf8_lossy(data.trim_ascii_start());
            let line = request.split("\r\n").next().unwrap_or("").split('\n').next().unwrap_or("");
            let mut words = line.split(' ');
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            assert_eq!(method, "GET", "200 for {line:?}");
            assert_eq!(path_of(target), "/metrics", "200 for {line:?}");
            assert!(answer.windows(22).any(|w| w == b"qkdpfd_policy_serial 7"), "no page");
        }
    }
);
