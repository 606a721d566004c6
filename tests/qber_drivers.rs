//! The network QBER drivers (`etsi015`, `prometheus`, `http-json`) and the
//! poller against qkdsim's feed over mutual TLS (in process), and against a
//! hostile plain-HTTP server on 127.0.0.1.

mod common;

use common::sim::{self, Sim};
use qkdpfd::conf::{QberConf, QberDriver, SimLinkConf};
use qkdpfd::engine::qber::poller::{self, PollResult};
use qkdpfd::engine::qber::{Driver, Freshness, HttpSettings, Sample, TlsPems};
use qkdpfd::sim::pki::Ca;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

const ETSI015: &str =
    "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link={qber_id}/qkdl_performance";

async fn start(interval: &str) -> Sim {
    let qber = format!("[qber]\nmeasure_interval = \"{interval}\"");
    sim::start(&["SAE-A", "SAE-B"], &qber).await
}

fn qber_conf(driver: QberDriver, url: &str, pointer: Option<&str>, scale: f64) -> QberConf {
    QberConf {
        driver,
        url: Some(url.to_string()),
        poll: Duration::from_secs(1),
        pointer: pointer.map(str::to_string),
        scale,
        ca: None,
        cert: None,
        key: None,
        sim: SimLinkConf::default(),
    }
}

/// Short enough for the hang and slow-loris cases, long enough for a
/// loaded machine.
fn quick() -> HttpSettings {
    HttpSettings {
        timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(1),
        ..HttpSettings::default()
    }
}

impl Sim {
    fn pems(&self) -> TlsPems {
        TlsPems {
            ca: Some(self.read("ca.pem")),
            cert: Some(self.read("sae-SAE-A.pem")),
            key: Some(Zeroizing::new(self.read("sae-SAE-A.key"))),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr().port())
    }

    fn driver(&self, kind: QberDriver, path: &str, pointer: Option<&str>, scale: f64) -> Driver {
        let c = qber_conf(kind, &self.url(path), pointer, scale);
        Driver::open("src", &c, &self.pems(), HttpSettings::default()).unwrap()
    }

    fn etsi015(&self) -> Driver {
        self.driver(QberDriver::Etsi015, ETSI015, None, 1.0)
    }

    fn prometheus(&self) -> Driver {
        self.driver(QberDriver::Prometheus, "/metrics", None, 1.0)
    }

    fn http_json(&self) -> Driver {
        let p = Some("/links/0/qber");
        self.driver(QberDriver::HttpJson, "/qber/{qber_id}", p, 0.01)
    }

    fn stall(&self, on: bool) {
        let link = self.state.link("ab").unwrap();
        link.feed.lock().unwrap().set_stalled(on);
    }
}

#[tokio::test]
async fn the_three_drivers_read_the_same_measurement() {
    let sim = start("1h").await;
    let e = sim.etsi015().poll("ab").await.unwrap();
    let p = sim.prometheus().poll("ab").await.unwrap();
    let h = sim.http_json().poll("ab").await.unwrap();
    assert!(e.qber > 0.01 && e.qber < 0.06, "{e:?}");
    assert_eq!(p, e);
    // Percent then scale 0.01: equal up to rounding.
    assert!((h.qber - e.qber).abs() < 1e-12, "{h:?} vs {e:?}");
    // Every feed's sequence is the measurement time in unix ms.
    assert_eq!((e.seq, h.seq), (p.seq, p.seq));
    let now_ms = qkdpfd::utc::now_unix_ms();
    assert!(e.seq <= now_ms && e.seq + 60_000 > now_ms, "{}", e.seq);
}

#[tokio::test]
async fn percent_without_scale_is_an_error_not_a_clamp() {
    let sim = start("1h").await;
    let mut d = sim.driver(QberDriver::HttpJson, "/qber/ab", Some("/links/0/qber"), 1.0);
    let e = d.poll("ab").await.unwrap_err();
    assert!(e.starts_with("qber src: https://localhost:"), "{e}");
    assert!(e.contains("QBER must be between 0 and 0.5"), "{e}");
    assert!(e.contains("x scale 1"), "{e}");
}

#[tokio::test]
async fn pointer_and_lookup_errors_name_the_source() {
    let sim = start("1h").await;
    let cases = [
        (
            QberDriver::HttpJson,
            "/qber/ab",
            Some("/links/1/qber"),
            "nothing at \"/links/1\"",
        ),
        (
            QberDriver::HttpJson,
            "/qber/ab",
            Some("/links/0/unit"),
            "not a number but a string",
        ),
        (
            QberDriver::HttpJson,
            "/qber/ab",
            Some("/links/0/qber/x"),
            "is a number",
        ),
        (
            QberDriver::Prometheus,
            "/metrics",
            None,
            "no qkd_qber sample for link_id \"zz\"",
        ),
        (QberDriver::Etsi015, ETSI015, None, "HTTP 404: unknown link"),
        (
            QberDriver::HttpJson,
            "/qber/{qber_id}",
            Some("/links/0/qber"),
            "HTTP 404",
        ),
        (QberDriver::Etsi015, "/metrics", None, "not JSON"),
    ];
    for (kind, path, pointer, want) in cases {
        let mut d = sim.driver(kind, path, pointer, 0.01);
        let e = d.poll("zz").await.unwrap_err();
        assert!(e.starts_with("qber src: "), "{e}");
        assert!(e.contains(want), "{path}: {e}");
    }
}

#[tokio::test]
async fn a_stalled_source_is_not_fresh() {
    let sim = start("100ms").await;
    let mut drivers = [sim.etsi015(), sim.prometheus(), sim.http_json()];
    sim.stall(true);
    for d in &mut drivers {
        let mut fresh = Freshness::new();
        let a = d.poll("ab").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let b = d.poll("ab").await.unwrap();
        assert_eq!(a, b);
        assert!(fresh.is_fresh(&a));
        assert!(
            !fresh.is_fresh(&b),
            "{} repeated {b:?} as fresh",
            d.source()
        );
    }
    sim.stall(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut fresh = Freshness::new();
    let a = drivers[0].poll("ab").await.unwrap();
    assert!(fresh.is_fresh(&a));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(fresh.is_fresh(&drivers[0].poll("ab").await.unwrap()));
}

#[tokio::test]
async fn tls_is_checked_both_ways() {
    let sim = start("1h").await;
    let c = qber_conf(QberDriver::Prometheus, &sim.url("/metrics"), None, 1.0);
    // The server's certificate from another CA.
    let other = TlsPems {
        ca: Some(Ca::new().unwrap().cert_pem().into_bytes()),
        ..sim.pems()
    };
    let e = Driver::open("src", &c, &other, quick())
        .unwrap()
        .poll("ab")
        .await
        .unwrap_err();
    assert!(e.contains("TLS: invalid peer certificate"), "{e}");
    // No client certificate: the feed wants mutual TLS.
    let anonymous = TlsPems {
        ca: Some(sim.read("ca.pem")),
        ..TlsPems::default()
    };
    let e = Driver::open("src", &c, &anonymous, quick())
        .unwrap()
        .poll("ab")
        .await
        .unwrap_err();
    assert!(e.starts_with("qber src: GET https://localhost:"), "{e}");
    // Without a CA there is no https at all.
    let e = Driver::open("src", &c, &TlsPems::default(), quick()).unwrap_err();
    assert_eq!(e, "qber src: https needs a ca");
}

#[tokio::test]
async fn plain_http_only_on_loopback() {
    for url in ["http://192.0.2.1/m", "http://localhost/m", "http://[::2]/m"] {
        let c = qber_conf(QberDriver::Prometheus, url, None, 1.0);
        let e = Driver::open("src", &c, &TlsPems::default(), quick()).unwrap_err();
        assert!(
            e.contains("only allowed for 127.0.0.1 and [::1]"),
            "{url}: {e}"
        );
    }
    let c = qber_conf(QberDriver::Prometheus, "http://[::1]:1/m", None, 1.0);
    assert!(Driver::open("src", &c, &TlsPems::default(), quick()).is_ok());
}

/// How the hostile server answers each connection.
#[derive(Clone)]
enum Hostile {
    /// These bytes, then close.
    Send(Vec<u8>),
    /// Nothing, ever.
    Hang,
    /// These bytes, then one byte every 150 ms.
    Trickle(Vec<u8>),
}

async fn hostile(how: Hostile) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let how = how.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                match how {
                    Hostile::Send(b) => {
                        let _ = s.write_all(&b).await;
                        let _ = s.shutdown().await;
                    }
                    Hostile::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                    Hostile::Trickle(b) => {
                        let _ = s.write_all(&b).await;
                        for _ in 0..200 {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            if s.write_all(b" ").await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn answer(status: &str, body: &str) -> Hostile {
    Hostile::Send(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

async fn poll_hostile(how: Hostile, kind: QberDriver, pointer: Option<&str>) -> String {
    let addr = hostile(how).await;
    let url = format!("http://127.0.0.1:{}/q", addr.port());
    let c = qber_conf(kind, &url, pointer, 1.0);
    let mut d = Driver::open("evil", &c, &TlsPems::default(), quick()).unwrap();
    let start = Instant::now();
    let e = d.poll("ab").await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5), "{e}");
    assert!(e.starts_with("qber evil: "), "{e}");
    e
}

#[tokio::test]
async fn hostile_answers_are_errors() {
    use QberDriver::{Etsi015, HttpJson, Prometheus};
    let big = "x".repeat(70_000);
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let v = Some("/v");
    let etsi_pct = r#"{"qkdl_performance": {"phys_perf": [{"perf_type": "QBER", "value": 3.1}]}}"#;
    let cases: Vec<(Hostile, QberDriver, Option<&str>, &str)> = vec![
        (answer("200 OK", r#"{"v": 7.5}"#), HttpJson, v, "found 7.5"),
        (
            answer("200 OK", r#"{"v": -0.01}"#),
            HttpJson,
            v,
            "between 0 and 0.5",
        ),
        (answer("200 OK", etsi_pct), Etsi015, None, "found 3.1"),
        (
            answer("200 OK", "qkd_qber{link_id=\"ab\"} 0.7\n"),
            Prometheus,
            None,
            "found 0.7",
        ),
        (
            answer("200 OK", "<html>hi</html>"),
            HttpJson,
            v,
            "answer is not JSON",
        ),
        (
            answer("200 OK", "<html>hi</html>"),
            Etsi015,
            None,
            "answer is not JSON",
        ),
        (
            answer("200 OK", &big),
            HttpJson,
            v,
            "answer larger than 65536 bytes",
        ),
        (
            Hostile::Send(chunked.into_bytes()),
            Prometheus,
            None,
            "larger than 65536",
        ),
        (
            answer("503 Busy", r#"{"message": "busy"}"#),
            HttpJson,
            v,
            "HTTP 503: busy",
        ),
        (
            answer("401 No", "who are you?"),
            Prometheus,
            None,
            "HTTP 401: who are you?",
        ),
        (
            Hostile::Send(b"SSH-2.0-OpenSSH\r\n".to_vec()),
            HttpJson,
            v,
            "HTTP: ",
        ),
        (Hostile::Hang, Etsi015, None, "timeout"),
        (
            Hostile::Trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec()),
            HttpJson,
            v,
            "larger than 65536",
        ),
        (
            Hostile::Trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{".to_vec()),
            HttpJson,
            v,
            "timeout",
        ),
    ];
    for (how, kind, pointer, want) in cases {
        let e = poll_hostile(how, kind, pointer).await;
        assert!(e.contains(want), "want {want:?}: {e}");
        assert!(e.contains("http://127.0.0.1:"), "{e}");
    }
}

#[tokio::test]
async fn changed_value_fallback_without_time_stamps() {
    // A prometheus exporter without time stamps: the same value twice is
    // not fresh; a new value is.
    let addr = hostile(answer("200 OK", "qkd_qber{link_id=\"ab\"} 0.03\n")).await;
    let url = format!("http://127.0.0.1:{}/metrics", addr.port());
    let c = qber_conf(QberDriver::Prometheus, &url, None, 1.0);
    let mut d = Driver::open("p", &c, &TlsPems::default(), quick()).unwrap();
    let mut fresh = Freshness::new();
    let a = d.poll("ab").await.unwrap();
    let b = d.poll("ab").await.unwrap();
    assert_eq!(a, Sample { qber: 0.03, seq: 1 });
    assert!(fresh.is_fresh(&a) && !fresh.is_fresh(&b));
}

#[tokio::test]
async fn the_poller_delivers_on_its_schedule_and_stops_with_the_receiver() {
    let sim = start("100ms").await;
    let (tx, mut rx) = mpsc::channel::<Vec<PollResult>>(4);
    let every = Duration::from_millis(100);
    let task = poller::spawn(
        "src".into(),
        "dr".into(),
        "ab".into(),
        sim.etsi015(),
        every,
        7,
        tx,
    );
    let mut got = Vec::new();
    while got.len() < 4 {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the poller went quiet")
            .expect("the poller stopped");
        assert_eq!(r.len(), 1, "one link, one reading a poll");
        got.extend(r);
    }
    for r in &got {
        assert_eq!(&*r.link, "dr");
        assert_eq!(r.poller, 7, "each reading names its poller");
        let s = r.result.as_ref().unwrap();
        assert!(s.qber > 0.0 && s.qber < 0.1, "{s:?}");
    }
    assert!(got.windows(2).all(|w| w[1].sampled_ns > w[0].sampled_ns));
    // Four polls 100 ms apart take 300 ms at least (the first is at once).
    let span = got[3].sampled_ns - got[0].sampled_ns;
    assert!(span >= 250_000_000, "{span} ns");
    assert!(got.last().unwrap().result.as_ref().unwrap().seq > got[0].result.as_ref().unwrap().seq);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the poller did not stop")
        .unwrap();
}

#[tokio::test]
async fn the_poller_reports_errors_and_stops_mid_poll() {
    let addr = hostile(Hostile::Hang).await;
    let url = format!("http://127.0.0.1:{}/q", addr.port());
    let c = qber_conf(QberDriver::HttpJson, &url, Some("/v"), 1.0);
    let d = Driver::open("h", &c, &TlsPems::default(), quick()).unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let task = poller::spawn(
        "h".into(),
        "dr".into(),
        "ab".into(),
        d,
        Duration::from_millis(100),
        1,
        tx,
    );
    let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let e = r[0].result.clone().unwrap_err();
    assert!(
        e.starts_with("qber h: GET http://127.0.0.1:") && e.contains(": timeout"),
        "{e}"
    );
    // Dropped while the next poll hangs: the task ends anyway.
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the poller did not stop")
        .unwrap();
}

/// A plain-HTTP server on 127.0.0.1 answering every GET with `body`
/// (or, once `fail` is set, with a 503), counting the GETs.
async fn counting(
    body: String,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let gets = Arc::new(AtomicUsize::new(0));
    let fail = Arc::new(AtomicBool::new(false));
    let (g, f) = (gets.clone(), fail.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (g, f, body) = (g.clone(), f.clone(), body.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                g.fetch_add(1, Ordering::SeqCst);
                let (status, body) = match f.load(Ordering::SeqCst) {
                    true => ("503 Service Unavailable", "down\n".to_string()),
                    false => ("200 OK", body),
                };
                let a = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(a.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, gets, fail)
}

async fn next(rx: &mut mpsc::Receiver<Vec<PollResult>>) -> Vec<PollResult> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the poller went quiet")
        .expect("the poller stopped")
}

#[tokio::test]
async fn links_that_read_one_document_share_one_get() {
    use qkdpfd::engine::qber::SharedLink;
    use std::sync::atomic::Ordering;
    // 2,000 links in one exposition: about 80 KiB, over the 64 KiB one
    // link's answer may hold.
    let n = 2000;
    let body: String = (0..n)
        .map(|i| {
            format!(
                "qkd_qber{{link_id=\"q{i}\"}} 0.0{} {}\n",
                1 + i % 9,
                1000 + i
            )
        })
        .collect();
    assert!(body.len() > 64 * 1024);
    let (addr, gets, fail) = counting(body).await;
    let url = format!("http://127.0.0.1:{}/metrics", addr.port());
    let c = qber_conf(QberDriver::Prometheus, &url, None, 1.0);
    let d = Driver::open("p", &c, &TlsPems::default(), quick()).unwrap();
    assert!(!d.per_link());
    let links: Vec<SharedLink> = (0..n)
        .map(|i| SharedLink::new(format!("l{i}"), &format!("q{i}")))
        .collect();
    let (tx, mut rx) = mpsc::channel(4096);
    let task = poller::spawn_shared("p".into(), links, d, Duration::from_millis(100), 9, tx);
    // Three polls, each in one message: each link its own value, all of
    // a poll at one moment.
    for _ in 0..3 {
        let round = next(&mut rx).await;
        assert_eq!(round.len(), n);
        for (i, r) in round.iter().enumerate() {
            assert_eq!(*r.link, format!("l{i}"));
            let s = r.result.as_ref().unwrap();
            assert_eq!(s.seq, 1000 + i as u64);
            assert!(
                (s.qber - (0.01 * (1 + i % 9) as f64)).abs() < 1e-12,
                "{s:?}"
            );
            assert_eq!(r.sampled_ns, round[0].sampled_ns);
            assert!(!r.whole);
            assert_eq!(r.poller, 9);
        }
    }
    let seen = gets.load(Ordering::SeqCst);
    assert!(
        (3..=4).contains(&seen),
        "{seen} GETs for 3 polls of {n} links"
    );
    // The source fails: every link hears it from the same poll.
    fail.store(true, Ordering::SeqCst);
    loop {
        let round = next(&mut rx).await;
        assert_eq!(round.len(), n);
        // What a poll in flight had read is all readings, or none.
        if round.iter().all(|r| r.result.is_ok()) {
            continue;
        }
        for r in &round {
            let e = r.result.as_ref().unwrap_err();
            assert!(e.contains("HTTP 503"), "{e}");
            assert!(r.whole, "a failed GET is every link's");
        }
        break;
    }
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the poller did not stop")
        .unwrap();
}
