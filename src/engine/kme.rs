//! ETSI GS QKD 014 client (reference/etsi014.md), run by the unprivileged
//! engine after the drop. It reads no files and resolves no names when the
//! parent hands it an address: the CA, certificate and key arrive as PEM
//! bytes from the parent (which read them before the chroot).
//!
//! Hard limits against a hostile or broken KME: a whole-request timeout, a
//! per-read timeout (slow-loris), a body cap (64 KiB by default, streamed),
//! and a cap on keys per request. Every answer is checked (`answer.rs`) before
//! anything is returned; a failure changes nothing and is a [`KmeError`]
//! naming the KME, the call and the status/message, never key bytes. The
//! caller retries with a [`Backoff`].

pub mod answer;
mod backoff;
mod error;

pub use answer::Status;
pub use backoff::Backoff;
pub use error::{Call, KmeError, KmeErrorKind};

use super::https;
use crate::proto::peer::KeyId;
use crate::secret::QkdKey;
use crate::url::{Kind, Url};
use answer::Expect;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use rustls_pki_types::ServerName;
use std::sync::Mutex;
use tokio::time::timeout;
use zeroize::Zeroizing;

/// Limits and options of one KME client.
#[derive(Clone, Debug, PartialEq)]
pub struct KmeSettings {
    /// Timeouts, body cap and the parent's resolved address.
    pub http: https::HttpSettings,
    /// Most keys asked for (or accepted) in one call.
    pub max_keys: usize,
    /// Use `GET enc_keys?number=&size=` instead of POST.
    pub enc_keys_get: bool,
    /// Use `GET dec_keys?key_ID=` (one call per key) instead of POST.
    pub dec_keys_get: bool,
    /// A link's stock is low below this stored_key_count; zero: never.
    pub keys_low: u64,
}

impl Default for KmeSettings {
    fn default() -> KmeSettings {
        KmeSettings {
            http: https::HttpSettings::default(),
            max_keys: 128,
            enc_keys_get: false,
            keys_low: 0,
            dec_keys_get: false,
        }
    }
}

/// Largest key size asked for, in bits.
const MAX_KEY_BITS: u32 = 65536;
/// Idle keep-alive connections kept per KME.
const IDLE_CONNECTIONS: usize = 4;
/// Calls in flight per KME: no more than the pool keeps, so a burst
/// (`rotate all` on a hub) reuses pooled connections instead of opening a
/// TLS connection per call (BENCHMARKS.md).
pub const IN_FLIGHT: usize = IDLE_CONNECTIONS;

/// An open HTTP/1.1 connection; dropping it stops its I/O task at once.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client for one KME (one `[kme.X]` section).
pub struct KmeClient {
    name: String,
    host: String,
    port: u16,
    prefix: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    settings: KmeSettings,
    idle: Mutex<Vec<Conn>>,
    in_flight: tokio::sync::Semaphore,
    /// `stored_key_count` by the far SAE it was asked for: one `[kme.X]`
    /// may serve links to several.
    stored_key_count: Mutex<std::collections::HashMap<String, u64>>,
    /// Links whose stock was last seen below `keys_low`.
    low: Mutex<std::collections::HashSet<String>>,
    /// When a status call for each far SAE was last started.
    status_at: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Far SAEs whose last status call failed (logged once per streak).
    status_failing: Mutex<std::collections::HashSet<String>>,
}

/// A status call per far SAE at most this often: the stock is the SAE
/// pair's, and a hub's thousand links to one far SAE would otherwise ask
/// it a thousand times in a `rotate all` (a third of the KME calls).
pub const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for KmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KmeClient({} https://{}:{}{})",
            self.name, self.host, self.port, self.prefix
        )
    }
}

impl KmeClient {
    /// `name` is the config's `[kme.NAME]`, used in every error. The server
    /// certificate must name `server_name` if given, else the URL's host.
    pub fn new(
        name: &str,
        base_url: &str,
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: Zeroizing<Vec<u8>>,
        server_name: Option<&str>,
    ) -> Result<KmeClient, KmeError> {
        let cfg_err = |m: String| KmeError::new(name, Call::Connect, KmeErrorKind::Config(m));
        let url = Url::parse(base_url, Kind::Kme).map_err(|e| cfg_err(format!("url: {e}")))?;
        let sni = server_name.unwrap_or(&url.host).to_string();
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| cfg_err(format!("bad server name {sni:?}")))?;
        let tls = crate::tls::client_config(ca_pem, cert_pem, &key_pem)
            .map_err(|e| cfg_err(e.to_string()))?;
        Ok(KmeClient {
            name: name.to_string(),
            host: url.host,
            port: url.port,
            prefix: url.path,
            server_name,
            tls: tokio_rustls::TlsConnector::from(tls),
            settings: KmeSettings::default(),
            idle: Mutex::new(Vec::new()),
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
            stored_key_count: Mutex::new(std::collections::HashMap::new()),
            low: Mutex::new(std::collections::HashSet::new()),
            status_at: Mutex::new(std::collections::HashMap::new()),
            status_failing: Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub fn with_settings(mut self, settings: KmeSettings) -> KmeClient {
        self.settings = settings;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `stored_key_count` from the last successful status call for
    /// `slave_sae_id`.
    pub fn stored_key_count(&self, slave_sae_id: &str) -> Option<u64> {
        self.stored_key_count
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(slave_sae_id)
            .copied()
    }

    /// Whether a status call for `slave_sae_id` is due at `now` (none in
    /// the last [`STATUS_EVERY`]); if so, notes it as started.
    pub fn status_due(&self, slave_sae_id: &str, now: std::time::Instant) -> bool {
        let mut at = self.status_at.lock().unwrap_or_else(|e| e.into_inner());
        match at.get(slave_sae_id) {
            Some(t) if now.saturating_duration_since(*t) < STATUS_EVERY => false,
            // Keyed by the SAEs of the config's links: bounded by the config.
            _ => {
                at.insert(slave_sae_id.to_string(), now);
                true
            }
        }
    }

    /// Notes `link`'s stored_key_count; Some(threshold) when it has just
    /// fallen below `keys_low` (said once until it is back at or above).
    pub fn stock_fell_low(&self, link: &str, stored: u64) -> Option<u64> {
        let low_at = self.settings.keys_low;
        let mut low = self.low.lock().unwrap_or_else(|e| e.into_inner());
        if stored >= low_at {
            low.remove(link);
            return None;
        }
        low.insert(link.to_string()).then_some(low_at)
    }

    fn err(&self, call: Call, kind: KmeErrorKind) -> KmeError {
        KmeError::new(&self.name, call, kind)
    }

    fn path(&self, sae: &str, what: &str) -> String {
        format!("{}/api/v1/keys/{}/{what}", self.prefix, https::encode(sae))
    }

    /// `GET /api/v1/keys/{slave_SAE_ID}/status`. A failure forgets the
    /// stock last seen (`show link` no longer shows it as current).
    pub async fn status(&self, slave_sae_id: &str) -> Result<Status, KmeError> {
        let answer = async {
            let body = (self.call(Call::Status, self.path(slave_sae_id, "status"), None)).await?;
            let st = answer::parse_status(&body).map_err(|k| self.err(Call::Status, k))?;
            // Another pair's stock would show as this link's (and its
            // kme_keys_low fire or not) on the KME's word alone. The SAE
            // asked about is the pair's slave, or its master where a KME
            // answers a slave's call with the pair the other way round.
            if st.slave_sae_id != slave_sae_id && st.master_sae_id != slave_sae_id {
                let why = format!(
                    "status is about SAEs {} and {}, not {}",
                    crate::text::printable(&st.master_sae_id, 64),
                    crate::text::printable(&st.slave_sae_id, 64),
                    crate::text::printable(slave_sae_id, 64)
                );
                return Err(self.err(Call::Status, KmeErrorKind::BadShape(why)));
            }
            Ok(st)
        };
        let st = answer.await;
        let mut stock = self
            .stored_key_count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut failing = self
            .status_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &st {
            // Keyed by the SAEs of the config's links: bounded by the config.
            Ok(st) => {
                stock.insert(slave_sae_id.to_string(), st.stored_key_count);
                failing.remove(slave_sae_id);
            }
            Err(_) => {
                stock.remove(slave_sae_id);
                failing.insert(slave_sae_id.to_string());
            }
        }
        st
    }

    /// `status` for `slave_sae_id` for the stock warning: its failure is
    /// returned the first time only, until a status call succeeds again
    /// (one log line per streak, however many rounds ask).
    pub async fn status_for_stock(&self, slave_sae_id: &str) -> Result<Option<u64>, KmeError> {
        let was_failing = (self
            .status_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
        .contains(slave_sae_id);
        match self.status(slave_sae_id).await {
            Ok(st) => Ok(Some(st.stored_key_count)),
            Err(_) if was_failing => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `enc_keys`: `number` new keys of `size` bits for `slave_sae_id`.
    pub async fn enc_keys(
        &self,
        slave_sae_id: &str,
        number: usize,
        size: u32,
    ) -> Result<Vec<(KeyId, QkdKey)>, KmeError> {
        let call = Call::EncKeys;
        if number == 0 || number > self.settings.max_keys {
            let m = format!("number must be 1..={}", self.settings.max_keys);
            return Err(self.err(call, KmeErrorKind::Config(m)));
        }
        if size == 0 || size % 8 != 0 || size > MAX_KEY_BITS {
            let m = format!("size must be a multiple of 8 in 8..={MAX_KEY_BITS}");
            return Err(self.err(call, KmeErrorKind::Config(m)));
        }
        let path = self.path(slave_sae_id, "enc_keys");
        let body = if self.settings.enc_keys_get {
            self.call(call, format!("{path}?number={number}&size={size}"), None)
                .await?
        } else {
            let req = serde_json::json!({"number": number, "size": size}).to_string();
            self.call(call, path, Some(req.into_bytes())).await?
        };
        answer::parse_keys(&body, Expect::Count(number), size).map_err(|k| self.err(call, k))
    }

    /// `dec_keys`: the keys `ids` that `master_sae_id` got from enc_keys,
    /// each `size` bits (the size the master asked for), in `ids` order.
    pub async fn dec_keys(
        &self,
        master_sae_id: &str,
        ids: &[KeyId],
        size: u32,
    ) -> Result<Vec<(KeyId, QkdKey)>, KmeError> {
        let call = Call::DecKeys;
        let mut unique = ids.to_vec();
        unique.sort();
        unique.dedup();
        if ids.is_empty() || ids.len() > self.settings.max_keys || unique.len() != ids.len() {
            let m = format!(
                "key_IDs must be 1..={} distinct IDs",
                self.settings.max_keys
            );
            return Err(self.err(call, KmeErrorKind::Config(m)));
        }
        let path = self.path(master_sae_id, "dec_keys");
        if !self.settings.dec_keys_get {
            let list: Vec<_> = ids
                .iter()
                .map(|i| serde_json::json!({"key_ID": i.as_str()}))
                .collect();
            let req = serde_json::json!({ "key_IDs": list }).to_string();
            let body = self.call(call, path, Some(req.into_bytes())).await?;
            return answer::parse_keys(&body, Expect::Ids(ids), size)
                .map_err(|k| self.err(call, k));
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let q = format!("{path}?key_ID={}", https::encode(id.as_str()));
            let body = self.call(call, q, None).await?;
            let one = std::slice::from_ref(id);
            let mut got =
                answer::parse_keys(&body, Expect::Ids(one), size).map_err(|k| self.err(call, k))?;
            out.append(&mut got);
        }
        Ok(out)
    }

    /// One HTTP exchange under the whole-request timeout; the 200 body.
    async fn call(
        &self,
        call: Call,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, KmeError> {
        // Waiting for a turn is not the KME's time; each turn is bounded
        // by the timeout, and the round by its own deadline.
        let _turn = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| self.err(call, KmeErrorKind::Config("client shut down".into())))?;
        match timeout(self.settings.http.timeout, self.exchange(call, &path, body)).await {
            Ok(r) => r,
            Err(_) => Err(self.err(call, KmeErrorKind::Timeout("request"))),
        }
    }

    async fn exchange(
        &self,
        call: Call,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, KmeError> {
        let pooled = self.take_idle();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect(call).await?,
        };
        let resp = match self.send(call, &mut conn, path, &body).await {
            // A kept-alive connection the KME closed meanwhile: once more on
            // a fresh one (at worst an enc_keys answer is lost: keys wasted,
            // never reused).
            Err(e) if reused && matches!(e.kind, KmeErrorKind::Http(_)) => {
                conn = self.connect(call).await?;
                self.send(call, &mut conn, path, &body).await?
            }
            r => r?,
        };
        let status = resp.status().as_u16();
        let read = self.read_body(call, resp).await;
        if read.is_ok() {
            self.put_idle(conn);
        }
        if status != 200 {
            // The status is the KME's answer whatever became of the body
            // (too large, cut short, too slow): an unreadable body costs
            // the message, never the status.
            let message = match &read {
                Ok(data) => answer::error_message(data),
                Err(e) => format!("(body unreadable: {})", e.kind),
            };
            return Err(self.err(call, KmeErrorKind::Status { status, message }));
        }
        read
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.sender.is_ready() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_CONNECTIONS && !conn.sender.is_closed() {
            idle.push(conn);
        }
    }

    async fn connect(&self, call: Call) -> Result<Conn, KmeError> {
        let rt = self.settings.http.read_timeout;
        let fail = |f| self.err(call, f);
        let tcp = https::tcp(self.settings.http.addr, &self.host, self.port, rt)
            .await
            .map_err(|f| fail(f.into()))?;
        let tls = https::tls(&self.tls, &self.server_name, tcp, rt)
            .await
            .map_err(|f| fail(f.into()))?;
        let (sender, task) = https::http1(tls).await.map_err(|f| fail(f.into()))?;
        Ok(Conn { sender, task })
    }

    async fn send(
        &self,
        call: Call,
        conn: &mut Conn,
        path: &str,
        body: &Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, KmeError> {
        let authority = crate::url::authority(&self.host, self.port);
        let builder = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "qkdpfd");
        let req = match body {
            Some(b) => builder
                .method(hyper::Method::POST)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b.clone()))),
            None => builder
                .method(hyper::Method::GET)
                .body(Full::new(Bytes::new())),
        }
        .map_err(|e| self.err(call, KmeErrorKind::Config(e.to_string())))?;
        let http = |e: hyper::Error| self.err(call, https::classify(&e).into());
        let rt = self.settings.http.read_timeout;
        match timeout(rt, conn.sender.ready()).await {
            Ok(r) => r.map_err(http)?,
            Err(_) => return Err(self.err(call, KmeErrorKind::Timeout("connection busy"))),
        }
        // No read timeout on the answer's head: a KME may work before it
        // answers (some ask the far KME first), and the whole-request
        // timeout around this call bounds the wait.
        conn.sender.send_request(req).await.map_err(http)
    }

    async fn read_body(
        &self,
        call: Call,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Zeroizing<Vec<u8>>, KmeError> {
        let (limit, rt) = (self.settings.http.max_body, self.settings.http.read_timeout);
        https::read_body(resp, limit, rt).await.map_err(|f| {
            let kind = match f {
                https::Failure::TooLarge => KmeErrorKind::BodyTooLarge { limit },
                other => other.into(),
            };
            self.err(call, kind)
        })
    }
}

impl From<https::Failure> for KmeErrorKind {
    fn from(f: https::Failure) -> KmeErrorKind {
        match f {
            https::Failure::Connect(m) => KmeErrorKind::Connect(m),
            https::Failure::Timeout(what) => KmeErrorKind::Timeout(what),
            https::Failure::Tls(m) => KmeErrorKind::Tls(m),
            https::Failure::Http(m) => KmeErrorKind::Http(m),
            // Only a body read can be too large; read_body names the cap.
            https::Failure::TooLarge => KmeErrorKind::Http("answer too large".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(https::encode("SAE-1_a.b~"), "SAE-1_a.b~");
        assert_eq!(https::encode("a/b c"), "a%2Fb%20c");
    }
}
