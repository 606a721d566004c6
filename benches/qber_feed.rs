//! A QBER document shared by many links (BENCHMARKS.md, issue 13 item 7).
//! A plain-HTTP server on 127.0.0.1 (in this process) answers every GET
//! with a Prometheus exposition of N links, as an exporter's `/metrics`
//! lists all its links (qkdsim serves one link per KME pair, so it cannot
//! stand in at this size); qkdpfd's prometheus driver reads every link's
//! QBER from it, both ways in turn:
//!
//! - one poller per link (what the engine did for every section before
//!   2026-12-05): N GETs of the whole document per poll (at most 256 at
//!   once here), each parsed for its own link, each answer under the
//!   64 KiB cap a link's answer had;
//! - one poller for the section (`Driver::poll_shared`): one GET, one
//!   parse.
//!
//! Per round: the wall time until every link has its reading, and the CPU
//! time of this process (the driver and the server together; the server
//! only writes a prepared answer), R rounds each.
//!
//! `cargo bench --features testing --bench qber_feed` (QKD_BENCH_LINKS,
//! default `100,1000,10000`; QKD_BENCH_ROUNDS, default 10).

#[path = "common/knobs.rs"]
mod knobs;
#[path = "common/stats.rs"]
mod stats;

use qkdpfd::conf::{QberConf, QberDriver, SimLinkConf};
use qkdpfd::engine::qber::{Driver, HttpSettings, SharedLink, TlsPems};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cpu_us() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

/// Serves `answer` to every request; its port.
async fn exporter(answer: Arc<Vec<u8>>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

fn driver(port: u16) -> Driver {
    let c = QberConf {
        driver: QberDriver::Prometheus,
        url: Some(format!("http://127.0.0.1:{port}/metrics")),
        poll: Duration::from_secs(1),
        pointer: None,
        scale: 1.0,
        ca: None,
        cert: None,
        key: None,
        sim: SimLinkConf::default(),
    };
    let settings = HttpSettings {
        timeout: Duration::from_secs(60),
        read_timeout: Duration::from_secs(30),
        ..HttpSettings::default()
    };
    Driver::open("feed", &c, &TlsPems::default(), settings).unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sizes = knobs::sizes_or("QKD_BENCH_LINKS", "100,1000,10000");
    let rounds = knobs::usize_or("QKD_BENCH_ROUNDS", 10).max(1);
    for n in sizes {
        let ids: Vec<String> = (0..n).map(|i| format!("l{i}")).collect();
        let body: String = (ids.iter().enumerate())
            .map(|(i, id)| {
                format!(
                    "qkd_qber{{link_id=\"{id}\"}} 0.0{} {}\n",
                    1 + i % 9,
                    1_700_000_000_000u64 + i as u64
                )
            })
            .collect();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let port = exporter(Arc::new(answer.into_bytes())).await;
        println!("{n} links ({} KiB of exposition):", body.len() / 1024);

        // One poller per link: N GETs at once.
        let (mut wall, mut cpu, mut failed) = (Vec::new(), Vec::new(), 0);
        for _ in 0..rounds {
            let (t, c) = (Instant::now(), cpu_us());
            let mut tasks = tokio::task::JoinSet::new();
            let mut results = Vec::new();
            for id in &ids {
                if tasks.len() >= 256 {
                    results.push(tasks.join_next().await.unwrap().unwrap());
                }
                let mut d = driver(port);
                let id = id.clone();
                tasks.spawn(async move { d.poll(&id).await });
            }
            while let Some(r) = tasks.join_next().await {
                results.push(r.unwrap());
            }
            failed += results.iter().filter(|r| r.is_err()).count();
            if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                eprintln!("  (a per-link reading failed: {e})");
            }
            wall.push(t.elapsed().as_micros() as u64);
            cpu.push(cpu_us() - c);
        }
        wall.sort_unstable();
        cpu.sort_unstable();
        println!(
            "  a poller per link:   wall {}\n                       cpu  {}\n                       {failed} of {} readings failed",
            stats::percentiles_ms(&wall),
            stats::percentiles_ms(&cpu),
            n * rounds
        );

        // One poller for all.
        let mut d = driver(port).for_links(n);
        let mut links: Vec<SharedLink> = ids
            .iter()
            .map(|id| SharedLink::new(id.as_str(), id))
            .collect();
        let (mut wall, mut cpu, mut failed) = (Vec::new(), Vec::new(), 0);
        for _ in 0..rounds {
            let (t, c) = (Instant::now(), cpu_us());
            match d.poll_shared(&mut links).await {
                Ok(each) => failed += each.iter().filter(|r| r.is_err()).count(),
                Err(e) => panic!("{e}"),
            }
            wall.push(t.elapsed().as_micros() as u64);
            cpu.push(cpu_us() - c);
        }
        wall.sort_unstable();
        cpu.sort_unstable();
        println!(
            "  one shared poller:   wall {}\n                       cpu  {}\n                       {failed} of {} readings failed",
            stats::percentiles_ms(&wall),
            stats::percentiles_ms(&cpu),
            n * rounds
        );
    }
}
