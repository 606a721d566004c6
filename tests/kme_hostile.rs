//! The ETSI 014 client against a KME that misbehaves every way issue 3
//! item 1 names. The server speaks raw HTTP/1.1 over the same mutual TLS as
//! a real KME, so each answer is exactly the bytes written here.
//! Every error must be the exact variant, name the KME and the call, and
//! never show key material.

use base64::Engine as _;
use qkdpfd::engine::https::HttpSettings;
use qkdpfd::engine::kme::{KmeClient, KmeError, KmeErrorKind, KmeSettings};
use qkdpfd::proto::peer::KeyId;
use qkdpfd::sim::pki::Ca;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The key bytes a hostile answer carries; must never show in an error.
const SECRET: &[u8] = b"TOPSECRETKEYBYTES-0123456789abcd";

fn secret_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(SECRET)
}

/// How the server answers.
#[derive(Clone)]
enum Answer {
    /// These bytes, then close.
    Raw(Vec<u8>),
    /// The head, then the body one byte per second.
    Trickle(String, Vec<u8>),
    /// Nothing at all.
    Silent,
    /// These bytes after a wait longer than the read timeout.
    Late(Duration, Vec<u8>),
}

fn http(status: &str, ctype: &str, body: &str) -> Answer {
    Answer::Raw(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn keys_json(entries: &[(&str, &str)]) -> Answer {
    let list: Vec<_> = entries
        .iter()
        .map(|(id, k)| serde_json::json!({"key_ID": id, "key": k}))
        .collect();
    http(
        "200 OK",
        "application/json",
        &serde_json::json!({ "keys": list }).to_string(),
    )
}

struct Pki {
    ca: Ca,
    client: qkdpfd::sim::pki::Issued,
}

fn pki() -> Pki {
    let ca = Ca::new().unwrap();
    let client = ca.client("SAE-A").unwrap();
    Pki { ca, client }
}

async fn read_request(s: &mut (impl AsyncReadExt + Unpin)) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while let Ok(n) = s.read(&mut b).await {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&b[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return;
        }
    }
}

async fn respond(s: &mut (impl AsyncWriteExt + Unpin), answer: &Answer) {
    match answer {
        Answer::Raw(b) => {
            let _ = s.write_all(b).await;
            let _ = s.flush().await;
        }
        Answer::Trickle(head, body) => {
            let _ = s.write_all(head.as_bytes()).await;
            // A byte each 250 ms: well inside the 1.5 s read timeout even
            // on a loaded machine, so only the 3 s total can end it.
            for b in body {
                let _ = s.write_all(&[*b]).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Answer::Silent => tokio::time::sleep(Duration::from_secs(60)).await,
        Answer::Late(wait, b) => {
            tokio::time::sleep(*wait).await;
            let _ = s.write_all(b).await;
            let _ = s.flush().await;
        }
    }
}

/// A hostile KME with a proper mTLS setup (server cert for localhost).
async fn hostile(p: &Pki, answer: Answer) -> SocketAddr {
    let server = p.ca.server("kme", &[]).unwrap();
    let cfg = qkdpfd::tls::server_config(
        p.ca.cert_pem().as_bytes(),
        server.cert_pem.as_bytes(),
        &server.key_bytes(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                read_request(&mut s).await;
                respond(&mut s, &answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A plain-HTTP server where a KME should be: the TLS handshake fails.
async fn plain_http() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let mut b = [0u8; 512];
            let _ = tcp.read(&mut b).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    addr
}

fn client(p: &Pki, addr: SocketAddr) -> KmeClient {
    let url = format!("https://localhost:{}", addr.port());
    let settings = KmeSettings {
        http: HttpSettings {
            timeout: Duration::from_secs(3),
            read_timeout: Duration::from_millis(1500),
            ..HttpSettings::default()
        },
        ..KmeSettings::default()
    };
    KmeClient::new(
        "hostile",
        &url,
        p.ca.cert_pem().as_bytes(),
        p.client.cert_pem.as_bytes(),
        p.client.key_bytes(),
        None,
    )
    .unwrap()
    .with_settings(settings)
}

/// enc_keys(1 key of 256 bits) against `answer`; the error, checked for
/// the KME's name and the absence of key material.
async fn enc_fails(answer: Answer) -> KmeError {
    let p = pki();
    let addr = hostile(&p, answer).await;
    let e = client(&p, addr)
        .enc_keys("SAE-B", 1, 256)
        .await
        .unwrap_err();
    no_secret(&e, "enc_keys");
    e
}

fn no_secret(e: &KmeError, call: &str) {
    let shown = format!("{e} {e:?}");
    assert!(
        shown.starts_with(&format!("kme hostile: {call}: ")),
        "{shown}"
    );
    assert!(
        !shown.contains(&secret_b64()[..12]),
        "key material in {shown}"
    );
    assert!(!shown.contains("TOPSECRET"), "key material in {shown}");
}

fn status_of(e: &KmeError) -> (u16, String) {
    match &e.kind {
        KmeErrorKind::Status { status, message } => (*status, message.clone()),
        other => panic!("expected an HTTP status error, got {other:?}"),
    }
}

#[tokio::test]
async fn error_statuses_with_and_without_bodies() {
    let etsi = r#"{"message":"size shall be a multiple of 8","details":[{"x":1}]}"#;
    let e = enc_fails(http("400 Bad Request", "application/json", etsi)).await;
    // ETSI's `details` says which field: kept beside the message.
    let shown = r#"size shall be a multiple of 8 (details: [{"x":1}])"#;
    assert_eq!(status_of(&e), (400, shown.into()));
    assert_eq!(
        e.to_string(),
        format!("kme hostile: enc_keys: HTTP 400: {shown}")
    );

    let e = enc_fails(http("401 Unauthorized", "text/plain", "")).await;
    assert_eq!(status_of(&e), (401, String::new()));
    assert_eq!(
        e.to_string(),
        "kme hostile: enc_keys: HTTP 401: (no message)"
    );

    let fastapi = r#"{"detail":[{"loc":["body","size"],"msg":"field required"}]}"#;
    let e = enc_fails(http(
        "422 Unprocessable Entity",
        "application/json",
        fastapi,
    ))
    .await;
    assert_eq!(status_of(&e).0, 422);
    assert!(e.to_string().contains("field required"), "{e}");

    let e = enc_fails(http(
        "503 Service Unavailable",
        "text/html",
        "<h1>upstream\ndown</h1>",
    ))
    .await;
    assert_eq!(status_of(&e), (503, "<h1>upstream\ndown</h1>".into()));
    assert!(
        e.to_string()
            .starts_with("kme hostile: enc_keys: HTTP 503: <h1>upstream"),
        "{e}"
    );

    let e = enc_fails(http("503 Service Unavailable", "application/json", "")).await;
    assert_eq!(status_of(&e), (503, String::new()));
}

#[tokio::test]
async fn an_error_body_holding_keys_is_still_only_a_message() {
    // A broken KME that puts keys into an error answer: only `message` shows.
    let body = format!(
        r#"{{"message":"nope","keys":[{{"key_ID":"k","key":"{}"}}]}}"#,
        secret_b64()
    );
    let e = enc_fails(http("400 Bad Request", "application/json", &body)).await;
    assert_eq!(status_of(&e), (400, "nope".into()));
}

#[tokio::test]
async fn a_200_that_is_not_json() {
    let body = format!("keys: {}", secret_b64());
    let e = enc_fails(http("200 OK", "text/plain", &body)).await;
    assert_eq!(e.kind, KmeErrorKind::NotJson);
    let e = enc_fails(http(
        "200 OK",
        "application/json",
        &format!(r#"{{"keys":"{}"}}"#, secret_b64()),
    ))
    .await;
    assert!(matches!(e.kind, KmeErrorKind::BadShape(_)), "{e}");
}

#[tokio::test]
async fn wrong_key_count() {
    let k = secret_b64();
    let e = enc_fails(keys_json(&[("k1", &k), ("k2", &k)])).await;
    assert_eq!(
        e.kind,
        KmeErrorKind::KeyCount {
            expected: 1,
            got: 2
        }
    );
    let e = enc_fails(keys_json(&[])).await;
    assert_eq!(
        e.kind,
        KmeErrorKind::KeyCount {
            expected: 1,
            got: 0
        }
    );
}

#[tokio::test]
async fn wrong_key_size() {
    let short = base64::engine::general_purpose::STANDARD.encode(&SECRET[..16]);
    let e = enc_fails(keys_json(&[("k1", &short)])).await;
    assert_eq!(
        e.kind,
        KmeErrorKind::KeySize {
            key_id: "k1".into(),
            expected: 32,
            got: 16
        }
    );
}

#[tokio::test]
async fn duplicate_and_malformed_key_ids() {
    let p = pki();
    let k = secret_b64();
    let addr = hostile(&p, keys_json(&[("k1", &k), ("k1", &k)])).await;
    let e = client(&p, addr)
        .enc_keys("SAE-B", 2, 256)
        .await
        .unwrap_err();
    no_secret(&e, "enc_keys");
    assert_eq!(e.kind, KmeErrorKind::DuplicateKeyId("k1".into()));

    let e = enc_fails(keys_json(&[("../etc/passwd", &k)])).await;
    assert!(matches!(e.kind, KmeErrorKind::MalformedKeyId(_)), "{e}");
    let e = enc_fails(keys_json(&[(&"a".repeat(65), &k)])).await;
    assert!(matches!(e.kind, KmeErrorKind::MalformedKeyId(_)), "{e}");
}

#[tokio::test]
async fn dec_keys_with_ids_not_requested() {
    let p = pki();
    let k = secret_b64();
    let addr = hostile(&p, keys_json(&[("k9", &k)])).await;
    let ids = [KeyId::new("k1").unwrap()];
    let e = client(&p, addr)
        .dec_keys("SAE-B", &ids, 256)
        .await
        .unwrap_err();
    no_secret(&e, "dec_keys");
    assert_eq!(e.kind, KmeErrorKind::UnknownKeyId("k9".into()));
    assert_eq!(
        e.to_string(),
        "kme hostile: dec_keys: key_ID k9 was not requested"
    );
}

#[tokio::test]
async fn bad_base64() {
    let e = enc_fails(keys_json(&[("k1", "TOPSECRET*not*base64*TOPSECRET")])).await;
    assert_eq!(
        e.kind,
        KmeErrorKind::BadBase64 {
            key_id: "k1".into()
        }
    );
}

#[tokio::test]
async fn oversized_bodies() {
    let big = format!(
        r#"{{"keys":[{{"key_ID":"k1","key":"{}"}}],"pad":"{}"}}"#,
        secret_b64(),
        "x".repeat(70_000)
    );
    // Declared length over the cap: refused before reading.
    let e = enc_fails(http("200 OK", "application/json", &big)).await;
    assert_eq!(e.kind, KmeErrorKind::BodyTooLarge { limit: 65536 });
    // No length, read to EOF: refused while streaming.
    let raw = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{big}").into_bytes();
    let e = enc_fails(Answer::Raw(raw)).await;
    assert_eq!(e.kind, KmeErrorKind::BodyTooLarge { limit: 65536 });
}

#[tokio::test]
async fn an_error_status_outlives_an_unreadable_body() {
    // Declared over the cap: the body is never read, the status is told.
    let big = "x".repeat(70_000);
    let e = enc_fails(http("503 Service Unavailable", "text/plain", &big)).await;
    assert_eq!(status_of(&e).0, 503, "{e}");
    assert!(
        e.to_string().contains("answer larger than 65536 bytes"),
        "{e}"
    );
    // Cut short: 5 of 100 bytes, then the connection closes.
    let raw = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort";
    let e = enc_fails(Answer::Raw(raw.to_vec())).await;
    assert_eq!(status_of(&e).0, 500, "{e}");
    assert!(
        e.to_string()
            .starts_with("kme hostile: enc_keys: HTTP 500: (body unreadable: "),
        "{e}"
    );
}

#[tokio::test]
async fn slow_loris_and_silence_time_out() {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        .to_string();
    let started = std::time::Instant::now();
    let e = enc_fails(Answer::Trickle(head, vec![b' '; 100])).await;
    assert_eq!(e.kind, KmeErrorKind::Timeout("request"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = enc_fails(Answer::Silent).await;
    assert_eq!(e.kind, KmeErrorKind::Timeout("request"));
    assert_eq!(e.to_string(), "kme hostile: enc_keys: timeout: request");
}

/// A KME that works before it answers (one that asks the far KME first)
/// has the whole-request timeout (3 s here), not the read timeout (1.5 s).
#[tokio::test]
async fn a_kme_that_answers_late_within_the_request_timeout_is_heard() {
    let Answer::Raw(good) = keys_json(&[("k1", &secret_b64())]) else {
        unreachable!()
    };
    let p = pki();
    let addr = hostile(&p, Answer::Late(Duration::from_millis(2000), good)).await;
    let keys = client(&p, addr).enc_keys("SAE-B", 1, 256).await.unwrap();
    assert_eq!(keys[0].1.expose(), SECRET);
}

/// A key container under another status than 200 is an error whose text
/// never holds the key (DESIGN §5: no key in a log line).
#[tokio::test]
async fn a_key_container_with_a_wrong_status_shows_no_key() {
    let body = serde_json::json!({"keys": [{"key_ID": "k1", "key": secret_b64()}]}).to_string();
    let e = enc_fails(http("201 Created", "application/json", &body)).await;
    assert_eq!(status_of(&e).0, 201, "{e}");
}

#[tokio::test]
async fn plain_http_is_a_tls_failure() {
    let p = pki();
    let addr = plain_http().await;
    let e = client(&p, addr).status("SAE-B").await.unwrap_err();
    assert!(matches!(e.kind, KmeErrorKind::Tls(_)), "{e}");
    assert!(
        e.to_string().starts_with("kme hostile: status: TLS: "),
        "{e}"
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = client(&p, addr).status("SAE-B").await.unwrap_err();
    assert!(matches!(e.kind, KmeErrorKind::Connect(_)), "{e}");
}

#[tokio::test]
async fn a_good_answer_still_works() {
    // The same server shape with a correct answer: the checks are not
    // simply refusing everything.
    let e = keys_json(&[("k1", &secret_b64())]);
    let p = pki();
    let addr = hostile(&p, e).await;
    let keys = client(&p, addr).enc_keys("SAE-B", 1, 256).await.unwrap();
    assert_eq!(keys[0].1.expose(), SECRET);
}

/// A failing status call is said once a streak (the stock warning cannot
/// fire without it) and forgets the stock last seen.
#[tokio::test]
async fn a_failing_status_is_reported_once_and_forgets_the_stock() {
    let p = pki();
    let addr = hostile(&p, http("401 Unauthorized", "application/json", "{}")).await;
    let c = client(&p, addr);
    let first = c.status_for_stock("SAE-B").await;
    assert!(
        matches!(
            first,
            Err(KmeError {
                kind: KmeErrorKind::Status { status: 401, .. },
                ..
            })
        ),
        "{first:?}"
    );
    assert!(matches!(c.status_for_stock("SAE-B").await, Ok(None)));
    assert_eq!(c.stored_key_count("SAE-B"), None);
}

/// A status about another pair of SAEs is not this pair's stock: refused,
/// named; the pair the other way round (a KME answering a slave's call) is.
#[tokio::test]
async fn a_status_about_another_pair_is_refused() {
    let status = |master: &str, slave: &str| {
        serde_json::json!({
            "source_KME_ID": "A", "target_KME_ID": "B",
            "master_SAE_ID": master, "slave_SAE_ID": slave,
            "key_size": 256, "stored_key_count": 7, "max_key_count": 100,
            "max_key_per_request": 1, "max_key_size": 1024, "min_key_size": 64,
            "max_SAE_ID_count": 0
        })
        .to_string()
    };
    let p = pki();
    let other = http("200 OK", "application/json", &status("SAE-A", "SAE-C"));
    let c = client(&p, hostile(&p, other).await);
    let e = c.status("SAE-B").await.unwrap_err();
    assert!(
        matches!(&e.kind, KmeErrorKind::BadShape(m) if m.contains("SAE-C") && m.contains("SAE-B")),
        "{e:?}"
    );
    assert_eq!(c.stored_key_count("SAE-B"), None);
    for (master, slave) in [("SAE-A", "SAE-B"), ("SAE-B", "SAE-A")] {
        let ours = http("200 OK", "application/json", &status(master, slave));
        let c = client(&p, hostile(&p, ours).await);
        assert_eq!(c.status("SAE-B").await.unwrap().stored_key_count, 7);
        assert_eq!(c.stored_key_count("SAE-B"), Some(7));
    }
}
