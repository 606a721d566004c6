//! Simulated ETSI GS QKD 014 KMEs (`qkdsim serve`), run by the qkdsim
//! process only. N KMEs, each on its own HTTPS listener with MUTUAL TLS: a
//! client certificate signed by the configured CA is required, and the
//! caller's SAE ID is the subject commonName (CN) of that certificate. A
//! KME answers only the SAEs in its `sae_ids` (else 401).
//!
//! Each `[link.X]` joins two KMEs through one simulated QKD link
//! ([`super::link::store`]):
//! keys accrue at the physics model's secret key rate, enc_keys on either
//! KME moves keys out of the shared pool to the caller (the master), and the
//! slave SAE on the other KME may fetch each of them once with dec_keys.
//! Errors carry ETSI bodies `{"message": ..., "details": [...]}`.

use super::conf::SimConfig;
use super::link::store::{LinkStore, Refusal};
use super::link::{KmeNode, SimLink, SimState, feed};
use crate::log::{self, Event};
use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

/// Largest request body a simulated KME reads.
const MAX_REQUEST: usize = 64 * 1024;
/// TLS handshake and request-head deadline (slow clients are dropped).
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once per KME.
const MAX_CONNECTIONS: usize = 256;

/// The simulator, bound and ready to serve.
pub struct Sim {
    state: Arc<SimState>,
    listeners: Vec<(usize, TcpListener, TlsAcceptor)>,
}

/// Reads the certificates, binds every KME's listener, builds the links.
pub async fn bind(cfg: &SimConfig) -> Result<Sim, String> {
    let names: Vec<&String> = cfg.kme.keys().collect();
    let mut kmes = Vec::new();
    let mut listeners = Vec::new();
    for (i, (name, k)) in cfg.kme.iter().enumerate() {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let key = Zeroizing::new(read(&k.key)?);
        let tls = crate::tls::server_config(&read(&k.ca)?, &read(&k.cert)?, &key)
            .map_err(|e| format!("kme.{name}: {e}"))?;
        let l = TcpListener::bind(k.listen)
            .await
            .map_err(|e| format!("kme.{name}: listen {}: {e}", k.listen))?;
        listeners.push((i, l, TlsAcceptor::from(tls)));
        kmes.push(KmeNode {
            name: name.clone(),
            kme_id: k.kme_id.clone(),
            sae_ids: k.sae_ids.clone(),
        });
    }
    let now = Instant::now();
    let mut links = Vec::new();
    for (name, raw) in &cfg.link {
        let conf = cfg
            .link_conf(name)
            .map_err(|e| format!("link.{name}: {e}"))?;
        let model = crate::sim::model::LinkModel::new(&conf.physics)?;
        let idx = |n: &String| {
            names
                .iter()
                .position(|x| *x == n)
                .ok_or(format!("link.{name}: no kme {n}"))
        };
        links.push(SimLink {
            name: name.clone(),
            kmes: [idx(&raw.kmes[0])?, idx(&raw.kmes[1])?],
            store: Mutex::new(LinkStore::new(conf, model, now)),
            feed: Mutex::new(feed::start(&cfg.qber)),
        });
    }
    Ok(Sim {
        state: Arc::new(SimState { kmes, links }),
        listeners,
    })
}

/// `qkdsim serve`: bind, then serve until `shutdown` completes.
pub async fn serve(cfg: SimConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    bind(&cfg).await?.run(shutdown).await;
    Ok(())
}

impl Sim {
    /// Each KME's name and bound address (for `listen = "127.0.0.1:0"`).
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(i, l, _)| Some((self.state.kmes[*i].name.clone(), l.local_addr().ok()?)))
            .collect()
    }

    pub fn state(&self) -> Arc<SimState> {
        self.state.clone()
    }

    /// Serves every KME until `shutdown`; then stops every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (kme, listener, acceptor) in self.listeners {
            tasks.spawn(accept_loop(self.state.clone(), kme, listener, acceptor));
        }
        shutdown.await;
        tasks.shutdown().await;
    }
}

async fn accept_loop(
    state: Arc<SimState>,
    kme: usize,
    listener: TcpListener,
    acceptor: TlsAcceptor,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                log::warn(format!("kme {}: accept: {e}", state.kmes[kme].name));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let (state, acceptor) = (state.clone(), acceptor.clone());
        conns.spawn(async move {
            connection(state, kme, tcp, peer, acceptor).await;
            drop(permit);
        });
    }
}

/// One client: TLS with a required client certificate, then HTTP/1.1.
async fn connection(
    state: Arc<SimState>,
    kme: usize,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
) {
    let name = state.kmes[kme].name.clone();
    // An answer is one small write after the client's request; Nagle would
    // hold any second segment of it until the client's delayed ACK (40 ms
    // on Linux). The client (src/engine/https.rs) sets the same.
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(CLIENT_DEADLINE, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return log::debug(format!("kme {name}: TLS from {peer}: {e}")),
        Err(_) => return log::debug(format!("kme {name}: TLS from {peer}: timeout")),
    };
    // The verifier required a certificate chaining to the CA; its CN is
    // the SAE ID (None if it has none: every request then gets 401).
    let sae = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::subject_common_name(c));
    let service = hyper::service::service_fn(move |req| {
        let (state, sae) = (state.clone(), sae.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(&state, kme, sae.as_deref(), req).await) }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(CLIENT_DEADLINE)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
    if let Err(e) = r {
        log::debug(format!("kme {name}: connection from {peer}: {e}"));
    }
}

type Answer = Response<Full<Bytes>>;

fn json_answer(status: u16, v: &Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An ETSI 014 error body.
fn etsi_error(status: u16, message: &str, details: &[String]) -> Answer {
    let details: Vec<Value> = details.iter().map(|d| json!({ "message": d })).collect();
    json_answer(status, &json!({ "message": message, "details": details }))
}

fn feed_answer(r: crate::sim::qber::Reply) -> Answer {
    let mut a = Response::new(Full::new(Bytes::from(r.body)));
    *a.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    a.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(r.content_type),
    );
    a
}

fn refused(r: Refusal) -> Answer {
    etsi_error(r.status, &r.message, &r.details)
}

/// The router: one flat match over the path. The ETSI 014 key delivery
/// API lives under `/api/v1/keys/`.
async fn handle(state: &SimState, kme: usize, sae: Option<&str>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let answer = match segments.as_slice() {
        ["api", "v1", "keys", sae_id, op] => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(a) => return a,
            };
            let Some(caller) = sae.filter(|s| state.kmes[kme].sae_ids.iter().any(|x| x == s))
            else {
                let who = sae.unwrap_or("(no CN)");
                let m = format!(
                    "SAE {} is not served by this KME",
                    crate::text::printable(who, 64)
                );
                return etsi_error(401, "unauthorized", &[m]);
            };
            let sae_id = percent_decode(sae_id);
            keys(state, kme, caller, &method, &sae_id, op, &query, &body)
        }
        // The QBER feed (ETSI 015-style JSON, Prometheus `qkd_qber{link_id}`,
        // plain JSON) and the eavesdropper/noise/stall controls: any client
        // certificate the CA signed may use them (`sim::qber`).
        s if crate::sim::qber::is_feed_path(s) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(a) => return a,
            };
            feed_answer(crate::sim::qber::route(
                state,
                &method,
                s,
                &body,
                percent_decode,
            ))
        }
        _ => etsi_error(404, "not found", &[]),
    };
    log::event(Event::KmeRequest)
        .kv("kme", &state.kmes[kme].name)
        .kv("sae", sae.unwrap_or("-"))
        .kv("method", &method)
        .kv("path", &path)
        .kv("status", answer.status().as_u16())
        .send();
    answer
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(etsi_error(400, "request body too large or unreadable", &[])),
    }
}

#[allow(clippy::too_many_arguments)]
fn keys(
    state: &SimState,
    kme: usize,
    caller: &str,
    method: &Method,
    sae_id: &str,
    op: &str,
    query: &str,
    body: &[u8],
) -> Answer {
    let Some((link, other)) = state.route(kme, sae_id) else {
        let m = format!(
            "no QKD link from this KME to SAE {}",
            crate::text::printable(sae_id, 64)
        );
        return etsi_error(400, "unknown SAE ID", &[m]);
    };
    let mut store = link.store.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match (method, op) {
        (&Method::GET, "status") => {
            let c = store.conf.clone();
            json_answer(
                200,
                &json!({
                    "source_KME_ID": state.kmes[kme].kme_id,
                    "target_KME_ID": state.kmes[other].kme_id,
                    "master_SAE_ID": caller,
                    "slave_SAE_ID": sae_id,
                    "key_size": c.key_size,
                    "stored_key_count": store.stored_key_count(now),
                    "max_key_count": c.max_key_count,
                    "max_key_per_request": c.max_key_per_request,
                    "max_key_size": c.max_key_size,
                    "min_key_size": c.min_key_size,
                    "max_SAE_ID_count": 0,
                }),
            )
        }
        (&Method::GET | &Method::POST, "enc_keys") => {
            let (number, size) = match enc_request(method, query, body, store.conf.key_size) {
                Ok(r) => r,
                Err(r) => return refused(r),
            };
            match store.take(caller, sae_id, number, size, now) {
                Ok(keys) => key_container(&keys),
                Err(r) => refused(r),
            }
        }
        (&Method::GET | &Method::POST, "dec_keys") => {
            let ids = match dec_request(method, query, body) {
                Ok(r) => r,
                Err(r) => return refused(r),
            };
            match store.give(sae_id, caller, &ids) {
                Ok(keys) => key_container(&keys),
                Err(r) => refused(r),
            }
        }
        (_, "status" | "enc_keys" | "dec_keys") => etsi_error(405, "method not allowed", &[]),
        _ => etsi_error(404, "not found", &[]),
    }
}

fn key_container(keys: &[(String, crate::secret::QkdKey)]) -> Answer {
    let b64 = base64::engine::general_purpose::STANDARD;
    let list: Vec<Value> = keys
        .iter()
        .map(|(id, k)| json!({ "key_ID": id, "key": b64.encode(k.expose()) }))
        .collect();
    json_answer(200, &json!({ "keys": list }))
}

fn query_params(query: &str) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.entry(percent_decode(k))
            .or_default()
            .push(percent_decode(v));
    }
    m
}

fn bad(message: &str) -> Refusal {
    Refusal {
        status: 400,
        message: message.to_string(),
        details: Vec::new(),
    }
}

/// (number, size) of an enc_keys request; ETSI defaults 1 and key_size.
fn enc_request(
    method: &Method,
    query: &str,
    body: &[u8],
    key_size: u32,
) -> Result<(u64, u64), Refusal> {
    let num = |v: Option<&Value>, default: u64| match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("number and size must be positive integers")),
    };
    if method == Method::GET {
        let q = query_params(query);
        let get = |k: &str| q.get(k).and_then(|v| v.first()).map(|s| s.parse::<u64>());
        return match (get("number").transpose(), get("size").transpose()) {
            (Ok(n), Ok(s)) => Ok((n.unwrap_or(1), s.unwrap_or(key_size as u64))),
            _ => Err(bad("number and size must be positive integers")),
        };
    }
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| bad("request body is not JSON"))?
    };
    let extra = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_array())
            .is_some_and(|a| !a.is_empty())
    };
    if extra("additional_slave_SAE_IDs") || extra("extension_mandatory") {
        return Err(bad(
            "additional_slave_SAE_IDs and extension_mandatory are not supported",
        ));
    }
    Ok((
        num(v.get("number"), 1)?,
        num(v.get("size"), key_size as u64)?,
    ))
}

/// The key_IDs of a dec_keys request.
fn dec_request(method: &Method, query: &str, body: &[u8]) -> Result<Vec<String>, Refusal> {
    if method == Method::GET {
        let ids = query_params(query).remove("key_ID").unwrap_or_default();
        return if ids.len() == 1 {
            Ok(ids)
        } else {
            Err(bad("GET dec_keys takes one key_ID"))
        };
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("request body is not JSON"))?;
    let list = v
        .get("key_IDs")
        .and_then(|l| l.as_array())
        .ok_or_else(|| bad("key_IDs missing"))?;
    list.iter()
        .map(|e| e.get("key_ID").and_then(|s| s.as_str()).map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("each key_IDs entry needs a key_ID string"))
}

/// `%XX` decoding of a path segment or query value (invalid escapes kept).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parsing() {
        assert_eq!(percent_decode("SAE%2DA%zz"), "SAE-A%zz");
        assert_eq!(
            enc_request(&Method::GET, "number=2&size=512", b"", 256).unwrap(),
            (2, 512)
        );
        assert_eq!(enc_request(&Method::POST, "", b"", 256).unwrap(), (1, 256));
        assert_eq!(
            enc_request(&Method::POST, "", br#"{"number":3}"#, 256).unwrap(),
            (3, 256)
        );
        assert!(enc_request(&Method::POST, "", br#"{"number":-3}"#, 256).is_err());
        assert!(
            enc_request(
                &Method::POST,
                "",
                br#"{"additional_slave_SAE_IDs":["x"]}"#,
                256
            )
            .is_err()
        );
        assert_eq!(
            dec_request(&Method::GET, "key_ID=a-b", b"").unwrap(),
            ["a-b"]
        );
        assert!(dec_request(&Method::GET, "key_ID=a&key_ID=b", b"").is_err());
        let ids = dec_request(
            &Method::POST,
            "",
            br#"{"key_IDs":[{"key_ID":"x"},{"key_ID":"y"}]}"#,
        )
        .unwrap();
        assert_eq!(ids, ["x", "y"]);
        assert!(dec_request(&Method::POST, "", br#"{"key_IDs":[{"id":"x"}]}"#).is_err());
    }
}
