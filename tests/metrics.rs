//! The Prometheus endpoint (issue 3 item 10, DESIGN §8): the whole rendering
//! of a fixed snapshot against a golden text, the text's syntax line by
//! line, and the HTTP server over raw TCP — values follow the watch channel,
//! 404/405/400, and a slow-loris client is dropped while others are served.

use qkdpfd::engine::metrics::http::{self, Limits};
use qkdpfd::engine::metrics::{CONTENT_TYPE, KeyMetrics, LinkMetrics, Snapshot, render};
use qkdpfd::lock::{Band, LockReason, Reasons};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Generous bound on anything the server should do at once.
const PATIENCE: Duration = Duration::from_secs(10);

fn fixed() -> Snapshot {
    let mut hq = LinkMetrics::new("hq-dr");
    hq.qber = Some(0.0312);
    hq.band = Some(Band::Degraded);
    hq.threshold = Some(0.11);
    hq.locked = false;
    hq.trips = 2;
    hq.sample_age_secs = Some(0.5);
    hq.keys = Some(KeyMetrics {
        age_secs: Some(42.25),
        max_age_secs: Some(900.0),
        epoch: Some(17),
        rotations_ok: 16,
        rotations_failed: 3,
        kme_stored_keys: Some(250),
        kme_keys_low: Some(10),
        generation_halted: 1,
    });
    let mut lab = LinkMetrics::new("lab");
    lab.reasons = [LockReason::SourceLost, LockReason::NoPolicy]
        .into_iter()
        .collect();
    Snapshot {
        taken: Instant::now(),
        started_unix: 1_767_225_600,
        policy_serial: Some(2026010101),
        policy_expired: false,
        policy_not_after: Some(1_798_761_600),
        policy_expiry_warning: Some(604_800),
        links: vec![hq, lab],
    }
}

const GOLDEN: &str = r#"# HELP qkd_qber Last fresh QBER reading (fraction).
# TYPE qkd_qber gauge
qkd_qber{link_id="hq-dr"} 0.0312
# HELP qkd_qber_threshold_exceeded_total QBER trips: trip_samples consecutive readings at or above qber_lockdown.
# TYPE qkd_qber_threshold_exceeded_total counter
qkd_qber_threshold_exceeded_total{link_id="hq-dr",severity="critical"} 2
qkd_qber_threshold_exceeded_total{link_id="lab",severity="critical"} 0
# HELP qkd_key_generation_halted_total Times the link stopped installing fresh keys (QBER hold or key-stale).
# TYPE qkd_key_generation_halted_total counter
qkd_key_generation_halted_total{link_id="hq-dr"} 1
# HELP qkdpfd_link_locked 1 if the firewall holds the link in lockdown.
# TYPE qkdpfd_link_locked gauge
qkdpfd_link_locked{link="hq-dr"} 0
qkdpfd_link_locked{link="lab"} 1
# HELP qkdpfd_lockdown_failed 1 if a lockdown is wanted and the kernel read back does not show it.
# TYPE qkdpfd_lockdown_failed gauge
qkdpfd_lockdown_failed{link="hq-dr"} 0
qkdpfd_lockdown_failed{link="lab"} 0
# HELP qkdpfd_wg_peer_removed 1 if no firewall step held and the link's WireGuard peer was removed.
# TYPE qkdpfd_wg_peer_removed gauge
qkdpfd_wg_peer_removed{link="hq-dr"} 0
qkdpfd_wg_peer_removed{link="lab"} 0
# HELP qkdpfd_link_lock_reason 1 for each lock reason the link currently has.
# TYPE qkdpfd_link_lock_reason gauge
qkdpfd_link_lock_reason{link="hq-dr",reason="qber"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="source-lost"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="no-key"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="key-stale"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="peer-lost"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="psk-drift"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="operator"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="no-policy"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="process-failure"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="no-session"} 0
qkdpfd_link_lock_reason{link="hq-dr",reason="interface"} 0
qkdpfd_link_lock_reason{link="lab",reason="qber"} 0
qkdpfd_link_lock_reason{link="lab",reason="source-lost"} 1
qkdpfd_link_lock_reason{link="lab",reason="no-key"} 0
qkdpfd_link_lock_reason{link="lab",reason="key-stale"} 0
qkdpfd_link_lock_reason{link="lab",reason="peer-lost"} 0
qkdpfd_link_lock_reason{link="lab",reason="psk-drift"} 0
qkdpfd_link_lock_reason{link="lab",reason="operator"} 0
qkdpfd_link_lock_reason{link="lab",reason="no-policy"} 1
qkdpfd_link_lock_reason{link="lab",reason="process-failure"} 0
qkdpfd_link_lock_reason{link="lab",reason="no-session"} 0
qkdpfd_link_lock_reason{link="lab",reason="interface"} 0
# HELP qkdpfd_qber_band 1 for the band of the last fresh QBER reading.
# TYPE qkdpfd_qber_band gauge
qkdpfd_qber_band{link="hq-dr",band="nominal"} 0
qkdpfd_qber_band{link="hq-dr",band="degraded"} 1
qkdpfd_qber_band{link="hq-dr",band="warning"} 0
qkdpfd_qber_band{link="hq-dr",band="critical"} 0
qkdpfd_qber_band{link="hq-dr",band="compromised"} 0
# HELP qkdpfd_qber_threshold_ratio qber_lockdown of the active policy (fraction).
# TYPE qkdpfd_qber_threshold_ratio gauge
qkdpfd_qber_threshold_ratio{link="hq-dr"} 0.11
# HELP qkdpfd_qber_sample_age_seconds Seconds since the last fresh QBER reading.
# TYPE qkdpfd_qber_sample_age_seconds gauge
qkdpfd_qber_sample_age_seconds{link="hq-dr"} 0.5
# HELP qkdpfd_key_age_seconds Seconds since the current PSK was installed.
# TYPE qkdpfd_key_age_seconds gauge
qkdpfd_key_age_seconds{link="hq-dr"} 42.25
# HELP qkdpfd_key_max_age_seconds max_key_age of the active policy: the key age at which the link locks (key-stale).
# TYPE qkdpfd_key_max_age_seconds gauge
qkdpfd_key_max_age_seconds{link="hq-dr"} 900
# HELP qkdpfd_key_epoch Epoch of the current PSK.
# TYPE qkdpfd_key_epoch gauge
qkdpfd_key_epoch{link="hq-dr"} 17
# HELP qkdpfd_rotations_total PSK rotation rounds by result.
# TYPE qkdpfd_rotations_total counter
qkdpfd_rotations_total{link="hq-dr",result="ok"} 16
qkdpfd_rotations_total{link="hq-dr",result="failed"} 3
# HELP qkdpfd_kme_stored_keys stored_key_count from the KME's last status answer.
# TYPE qkdpfd_kme_stored_keys gauge
qkdpfd_kme_stored_keys{link="hq-dr"} 250
# HELP qkdpfd_kme_stored_keys_low keys_low of the link's KME: a stored_key_count below it is low.
# TYPE qkdpfd_kme_stored_keys_low gauge
qkdpfd_kme_stored_keys_low{link="hq-dr"} 10
# HELP qkdpfd_policy_serial Serial of the active policy bundle.
# TYPE qkdpfd_policy_serial gauge
qkdpfd_policy_serial 2026010101
# HELP qkdpfd_policy_expired 1 if the active policy bundle is past not_after.
# TYPE qkdpfd_policy_expired gauge
qkdpfd_policy_expired 0
# HELP qkdpfd_policy_not_after_seconds not_after of the active policy bundle, seconds since the epoch.
# TYPE qkdpfd_policy_not_after_seconds gauge
qkdpfd_policy_not_after_seconds 1798761600
# HELP qkdpfd_policy_expiry_warning_seconds expiry_warning: how long before not_after the daemon warns.
# TYPE qkdpfd_policy_expiry_warning_seconds gauge
qkdpfd_policy_expiry_warning_seconds 604800
# HELP qkdpfd_start_time_seconds Start time of the daemon, seconds since the epoch.
# TYPE qkdpfd_start_time_seconds gauge
qkdpfd_start_time_seconds 1767225600
# HELP qkdpfd_links Links configured.
# TYPE qkdpfd_links gauge
qkdpfd_links 2
"#;

#[test]
fn golden_rendering() {
    let text = render(&fixed());
    assert_eq!(text, GOLDEN);
}

// ---- the text's syntax ----

/// One sample line: `name{k="v",…} value` (labels optional).
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn metric_name(s: &str) -> Option<(String, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let name = &s[..end];
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    first_ok.then(|| (name.to_string(), &s[end..]))
}

/// A quoted label value with the exposition's three escapes; returns the
/// unescaped value and the rest after the closing quote.
fn label_value(s: &str) -> Option<(String, &str)> {
    let mut v = String::new();
    let mut chars = s.strip_prefix('"')?.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((v, &s[i + 2..])),
            '\\' => match chars.next()?.1 {
                '\\' => v.push('\\'),
                '"' => v.push('"'),
                'n' => v.push('\n'),
                _ => return None,
            },
            '\n' => return None,
            c => v.push(c),
        }
    }
    None
}

fn labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    let Some(rest) = s.strip_prefix('{') else {
        return Some((out, s));
    };
    s = rest;
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Some((out, rest));
        }
        let (k, rest) = metric_name(s)?;
        let (v, rest) = label_value(rest.strip_prefix('=')?)?;
        out.push((k, v));
        s = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = || format!("bad sample line {line:?}");
    let (name, rest) = metric_name(line).ok_or_else(bad)?;
    let (labels, rest) = labels(rest).ok_or_else(bad)?;
    let value = rest.strip_prefix(' ').ok_or_else(bad)?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| bad())?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Checks every line and that each sample follows its own `# TYPE`, with
/// no family twice and no series twice; returns the samples.
fn parse(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "text ends with a line feed");
    let mut typed = HashSet::new();
    let mut current = String::new();
    let mut series = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "gauge" | "counter"), "{line}");
            assert!(typed.insert(name.to_string()), "family twice: {name}");
            current = name.to_string();
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let s = parse_sample(line).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, current, "sample outside its family: {line}");
        assert!(!s.value.is_nan(), "absent values are omitted: {line}");
        assert!(series.insert(format!("{}{:?}", s.name, s.labels)), "{line}");
        out.push(s);
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
}

#[test]
fn golden_text_parses() {
    let samples = parse(GOLDEN);
    assert_eq!(samples.len(), 52);
    let hq = [("link_id", "hq-dr")];
    assert_eq!(value(&samples, "qkd_qber", &hq), Some(0.0312));
    assert_eq!(value(&samples, "qkd_qber", &[("link_id", "lab")]), None);
}

#[test]
fn hostile_link_names_are_escaped() {
    let mut s = fixed();
    let name = "a\"b\\c\nd} 1\n";
    s.links[0].link = name.to_string();
    let samples = parse(&render(&s));
    assert_eq!(
        value(&samples, "qkd_qber", &[("link_id", name)]),
        Some(0.0312)
    );
    let locked = value(&samples, "qkdpfd_link_locked", &[("link", name)]);
    assert_eq!(locked, Some(0.0));
}

#[test]
fn absent_values_are_omitted() {
    let mut s = Snapshot::empty(7, Instant::now());
    s.links.push(LinkMetrics::new("fresh"));
    let text = render(&s);
    let samples = parse(&text);
    assert!(!text.contains("NaN"));
    for absent in [
        "qkd_qber",
        "qkdpfd_qber_threshold_ratio",
        "qkdpfd_key_max_age_seconds",
        "qkdpfd_qber_sample_age_seconds",
        "qkdpfd_key_age_seconds",
        "qkdpfd_rotations_total",
        "qkdpfd_policy_serial",
        "qkdpfd_qber_band",
    ] {
        assert!(samples.iter().all(|x| x.name != absent), "{absent}");
    }
    let fresh = [("link", "fresh")];
    assert_eq!(value(&samples, "qkdpfd_link_locked", &fresh), Some(1.0));
    assert_eq!(value(&samples, "qkdpfd_start_time_seconds", &[]), Some(7.0));
}

// ---- the server, over raw TCP ----

struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn request(addr: SocketAddr, raw: &str) -> Answer {
    let exchange = async {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(raw.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).await.expect("read");
        buf
    };
    let buf = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the server answers");
    let text = String::from_utf8(buf).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await
}

async fn start(limits: Limits) -> (SocketAddr, watch::Sender<Snapshot>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(fixed());
    tokio::spawn(http::serve_with(listener, rx, limits));
    (addr, tx)
}

fn quick() -> Limits {
    Limits {
        max_connections: 4,
        header_timeout: Duration::from_millis(500),
        connection_timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn values_follow_the_watch_channel() {
    let (addr, tx) = start(Limits::default()).await;
    let a = get(addr, "/metrics").await;
    assert_eq!(a.status, 200);
    assert!(a.head.contains(&format!("content-type: {CONTENT_TYPE}")));
    let samples = parse(&a.body);
    let hq = [("link_id", "hq-dr")];
    assert_eq!(value(&samples, "qkd_qber", &hq), Some(0.0312));
    let serial = value(&samples, "qkdpfd_policy_serial", &[]);
    assert_eq!(serial, Some(2026010101.0));

    tx.send_modify(|s| {
        s.links[0].qber = Some(0.27);
        s.links[0].locked = true;
        s.links[0].reasons.insert(LockReason::Qber);
        s.links[0].trips += 1;
        s.policy_serial = None;
    });
    let samples = parse(&get(addr, "/metrics?x=1").await.body);
    assert_eq!(value(&samples, "qkd_qber", &hq), Some(0.27));
    let hq_link = [("link", "hq-dr")];
    assert_eq!(value(&samples, "qkdpfd_link_locked", &hq_link), Some(1.0));
    let qber = [("link", "hq-dr"), ("reason", "qber")];
    assert_eq!(value(&samples, "qkdpfd_link_lock_reason", &qber), Some(1.0));
    let trips = [("link_id", "hq-dr"), ("severity", "critical")];
    let name = "qkd_qber_threshold_exceeded_total";
    assert_eq!(value(&samples, name, &trips), Some(3.0));
    assert_eq!(value(&samples, "qkdpfd_policy_serial", &[]), None);
}

#[tokio::test]
async fn ages_are_as_of_the_request() {
    let (addr, tx) = start(Limits::default()).await;
    let past = Instant::now().checked_sub(Duration::from_secs(100));
    tx.send_modify(|s| s.taken = past.unwrap_or(s.taken));
    let samples = parse(&get(addr, "/metrics").await.body);
    let age = value(&samples, "qkdpfd_key_age_seconds", &[("link", "hq-dr")]);
    let age = age.expect("key age");
    if past.is_some() {
        assert!((142.0..1000.0).contains(&age), "{age}");
    }
}

#[tokio::test]
async fn other_paths_methods_and_bodies_are_refused() {
    let (addr, _tx) = start(Limits::default()).await;
    assert_eq!(get(addr, "/").await.status, 404);
    assert_eq!(get(addr, "/metricsx").await.status, 404);
    let post = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let a = request(addr, post).await;
    assert_eq!(a.status, 405);
    assert!(a.head.contains("allow: get"), "{}", a.head);
    assert!(!a.body.contains("qkd_qber"));
    let body = "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let a = request(addr, body).await;
    assert_eq!(a.status, 400);
    assert!(!a.body.contains("qkd_qber"));
    let chunked = "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(request(addr, chunked).await.status, 400);
    // Still serving after all that.
    assert_eq!(get(addr, "/metrics").await.status, 200);
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let (addr, _tx) = start(quick()).await;
    for junk in ["\r\n\r\n", "GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n"] {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(junk.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(PATIENCE, c.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "junk {junk:?} closed in time");
    }
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = c.write_all(huge.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, c.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("qkd_qber"));
    assert_eq!(get(addr, "/metrics").await.status, 200);
}

/// Reads until EOF or error; true if the server closed within PATIENCE.
async fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(until, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slow_loris_is_dropped_while_others_are_served() {
    let (addr, _tx) = start(quick()).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /metr").await.expect("write");
    let t0 = Instant::now();
    // Others are served while the slow one hangs.
    for _ in 0..3 {
        assert_eq!(get(addr, "/metrics").await.status, 200);
    }
    assert!(closed_by_server(&mut slow).await, "slow client dropped");
    assert!(t0.elapsed() < PATIENCE);
    assert_eq!(get(addr, "/metrics").await.status, 200);
}

#[tokio::test]
async fn connection_cap_holds_then_frees() {
    let limits = Limits {
        max_connections: 1,
        ..quick()
    };
    let (addr, _tx) = start(limits).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /").await.expect("write");
    // Give the server the chance to take the slow client into its one slot.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waiting = TcpStream::connect(addr).await.expect("connect");
    waiting
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), waiting.read(&mut byte)).await;
    assert!(early.is_err(), "no answer while the only slot is taken");
    // The slow client times out, its slot frees, the waiting one is served.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, waiting.read_to_end(&mut buf)).await;
    assert!(read.is_ok());
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(&mut slow).await);
}

#[tokio::test]
async fn a_thousand_links_are_served_whole() {
    let (addr, tx) = start(Limits::default()).await;
    let mut s = fixed();
    let template = s.links[0].clone();
    s.links = (0..1000)
        .map(|i| LinkMetrics {
            link: format!("link-{i}"),
            ..template.clone()
        })
        .collect();
    let expected = render(&s);
    tx.send_replace(s);
    let a = get(addr, "/metrics").await;
    assert_eq!(a.status, 200);
    assert!(a.body.len() > 1_000_000, "{}", a.body.len());
    let samples = parse(&a.body);
    assert_eq!(value(&samples, "qkdpfd_links", &[]), Some(1000.0));
    // Same text apart from the ages, which are as of the request.
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.contains("_age_seconds{"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(strip(&a.body), strip(&expected));
}

#[test]
fn reasons_cover_every_lock_reason() {
    let mut s = fixed();
    s.links[0].reasons = LockReason::ALL.into_iter().collect::<Reasons>();
    let samples = parse(&render(&s));
    for r in LockReason::ALL {
        let l = [("link", "hq-dr"), ("reason", r.as_str())];
        assert_eq!(
            value(&samples, "qkdpfd_link_lock_reason", &l),
            Some(1.0),
            "{r}"
        );
    }
}
