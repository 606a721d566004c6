//! qkdsim's QBER feed and controls over mutual TLS (in process, on
//! 127.0.0.1:0, certificates from `qkdsim pki`'s code): the three views
//! agree, measurements tick and repeat between ticks, eve/noise/stall work,
//! bad controls get ETSI-style errors.

mod common;

use common::sim::{self, Sim};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use qkdpfd::sim::pki::Ca;
use qkdpfd::utc::parse_rfc3339_ms;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use zeroize::Zeroizing;

const ETSI015: &str =
    "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link=ab/qkdl_performance";

async fn start(interval: &str) -> Sim {
    let qber = format!("[qber]\nmeasure_interval = \"{interval}\"");
    sim::start(&["SAE-A", "SAE-B", "SAE-X"], &qber).await
}

impl Sim {
    /// One request as SAE-X (a certificate the CA signed, served by no
    /// KME: the feed is open to any such client).
    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let key = Zeroizing::new(self.read("sae-SAE-X.key"));
        let cfg =
            qkdpfd::tls::client_config(&self.read("ca.pem"), &self.read("sae-SAE-X.pem"), &key)
                .unwrap();
        request(cfg, self.addr(), method, path, body).await.unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// (qber fraction, seq, measured_at ms) from the plain JSON view.
    async fn hip(&self) -> (f64, u64, u64) {
        let v = self.json("/qber/ab").await;
        let l = &v["links"][0];
        assert_eq!(
            (l["id"].as_str(), l["unit"].as_str()),
            (Some("ab"), Some("percent"))
        );
        (
            l["qber"].as_f64().unwrap() / 100.0,
            l["seq"].as_u64().unwrap(),
            l["measured_at"].as_u64().unwrap(),
        )
    }

    /// The first measurement with a seq above `after`.
    async fn next_after(&self, after: u64) -> (f64, u64, u64) {
        for _ in 0..200 {
            let m = self.hip().await;
            if m.1 > after {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no measurement after seq {after}");
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = self.call("POST", path, body).await;
        (status, serde_json::from_str(&text).unwrap())
    }
}

async fn request(
    cfg: std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8(bytes.to_vec()).unwrap()))
}

#[tokio::test]
async fn the_three_feeds_serve_one_measurement() {
    // One tick an hour: every read below sees measurement 1.
    let sim = start("1h").await;
    let v = sim.json(ETSI015).await;
    let perf = &v["qkdl_performance"];
    assert!(perf["skr"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(perf["expected_consumption"], 0);
    let entry = &perf["phys_perf"][0];
    assert_eq!(entry["perf_type"], "QBER");
    let value = entry["value"].as_f64().unwrap();
    assert!(value > 0.01 && value < 0.06, "{value}");
    let stamp = entry["time_stamp"].as_str().unwrap();
    assert!(stamp.ends_with('Z') && stamp.len() == 24, "{stamp}");
    let ms = parse_rfc3339_ms(stamp).unwrap();

    let (status, text) = sim.call("GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE qkd_qber gauge\n"), "{text}");
    assert!(
        text.contains(&format!("\nqkd_qber{{link_id=\"ab\"}} {value} {ms}\n")),
        "{text}"
    );
    assert!(text.contains("# TYPE qkd_skr gauge\n"), "{text}");

    let (q, seq, at) = sim.hip().await;
    assert!((q - value).abs() < 1e-12, "{q} vs {value}");
    assert_eq!((seq, at), (1, ms));

    // A percent-encoded RESTCONF path reaches the same resource.
    let enc = ETSI015.replace(':', "%3A").replace("link=", "link%3D");
    assert_eq!(sim.json(&enc).await, v);
}

#[tokio::test]
async fn measurements_tick_and_repeat_between_ticks() {
    let sim = start("100ms").await;
    let mut seen: Vec<(f64, u64, u64)> = Vec::new();
    for _ in 0..25 {
        seen.push(sim.hip().await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let first = seen[0];
    let last = seen[seen.len() - 1];
    assert!(last.1 > first.1, "seq never advanced: {seen:?}");
    for w in seen.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(b.1 >= a.1, "seq went back: {seen:?}");
        if a.1 == b.1 {
            assert_eq!(a, b, "same seq, different measurement");
        } else {
            assert_eq!(b.2 - a.2, 100 * (b.1 - a.1), "time stamps follow the ticks");
        }
    }
}

#[tokio::test]
async fn eve_raises_the_qber_on_the_next_measurement() {
    let sim = start("100ms").await;
    let (base, seq, _) = sim.hip().await;
    assert!(base < 0.06, "{base}");
    let (status, v) = sim.post("/sim/ab/eve", r#"{"fraction": 1.0}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["eve"], 1.0);
    assert!(v["expected_qber"].as_f64().unwrap() > 0.25, "{v}");
    // Full intercept-resend leaves no secret key: the rate and the feed's
    // skr drop to zero, e1 is past 25 %.
    assert_eq!(v["skr"], 0, "{v}");
    assert!(v["single_photon_error"].as_f64().unwrap() > 0.25, "{v}");
    assert_eq!(sim.json(ETSI015).await["qkdl_performance"]["skr"], 0);
    let (q, s, _) = sim.next_after(seq).await;
    assert!(q > 0.24, "QBER {q} at seq {s} with full intercept-resend");

    let (status, v) = sim.post("/sim/ab/eve", r#"{"fraction": 0}"#).await;
    assert_eq!(status, 200);
    assert!(v["skr"].as_u64().unwrap() > 0, "{v}");
    let (q, _, _) = sim.next_after(s).await;
    assert!(q < 0.06, "QBER {q} after eve left");
}

#[tokio::test]
async fn noise_adds_to_the_qber() {
    let sim = start("100ms").await;
    let (base, seq, _) = sim.hip().await;
    let (status, v) = sim.post("/sim/ab/noise", r#"{"qber": 0.1}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["noise"], 0.1);
    let (q, _, _) = sim.next_after(seq).await;
    assert!(q > base + 0.07, "QBER {q}, was {base}");
}

#[tokio::test]
async fn a_stalled_link_repeats_its_last_measurement() {
    let sim = start("100ms").await;
    let (status, v) = sim.post("/sim/ab/stall", r#"{"stalled": true}"#).await;
    assert_eq!((status, &v["stalled"]), (200, &Value::Bool(true)), "{v}");
    let a = sim.hip().await;
    let etsi_a = sim.json(ETSI015).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(sim.hip().await, a);
    assert_eq!(sim.json(ETSI015).await, etsi_a);
    let (status, _) = sim.post("/sim/ab/stall", r#"{"stalled": false}"#).await;
    assert_eq!(status, 200);
    let b = sim.next_after(a.1).await;
    assert!(b.2 > a.2);
}

#[tokio::test]
async fn bad_controls_get_etsi_errors() {
    let sim = start("1h").await;
    let cases = [
        (
            "/sim/ab/eve",
            r#"{"fraction": 1.5}"#,
            400,
            "eve must be between 0 and 1",
        ),
        ("/sim/ab/eve", r#"{"fraction": "1"}"#, 400, "fraction"),
        (
            "/sim/ab/noise",
            r#"{"qber": -0.1}"#,
            400,
            "noise must be between 0 and 0.5",
        ),
        ("/sim/ab/noise", "qber=0.1", 400, ""),
        ("/sim/ab/stall", r#"{"stalled": 1}"#, 400, "stalled"),
        (
            "/sim/zz/eve",
            r#"{"fraction": 0}"#,
            404,
            "no simulated link zz",
        ),
        ("/sim/ab/laser", r#"{"on": true}"#, 404, ""),
    ];
    for (path, body, want, detail) in cases {
        let (status, v) = sim.post(path, body).await;
        assert_eq!(status, want, "{path} {body}: {v}");
        assert!(v["message"].is_string(), "{v}");
        assert!(
            v["details"].to_string().contains(detail),
            "{path} {body}: {v}"
        );
    }
    // The model kept its settings.
    let v = sim.post("/sim/ab/noise", r#"{"qber": 0}"#).await.1;
    assert_eq!(
        (v["eve"].as_f64(), v["noise"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    for (method, path, want) in [
        ("GET", "/sim/ab/eve", 405),
        ("POST", "/metrics", 405),
        ("POST", ETSI015, 405),
        ("GET", "/qber/zz", 404),
        ("GET", "/restconf/data/x", 404),
    ] {
        let (status, _) = sim.call(method, path, "").await;
        assert_eq!(status, want, "{method} {path}");
    }
}

#[tokio::test]
async fn a_client_from_another_ca_cannot_read() {
    let sim = start("1h").await;
    let rogue = Ca::new().unwrap().client("SAE-X").unwrap();
    let cfg = qkdpfd::tls::client_config(
        &sim.read("ca.pem"),
        rogue.cert_pem.as_bytes(),
        &rogue.key_bytes(),
    )
    .unwrap();
    let r = request(cfg, sim.addr(), "GET", "/metrics", "").await;
    assert!(r.is_err(), "{r:?}");
}
