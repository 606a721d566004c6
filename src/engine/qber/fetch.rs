//! One HTTP(S) GET for the network QBER drivers (`etsi015`, `prometheus`,
//! `http-json`), run by the engine after the privilege drop: no files are
//! read here (the CA, certificate and key come from the parent as PEM
//! bytes) and no name is resolved if the parent handed over an address.
//!
//! Limits against a hostile or broken source: a whole-request timeout, a
//! per-read timeout (slow-loris), a 64 KiB body cap (streamed, checked
//! against Content-Length first). One fresh connection per poll (a QBER
//! poll is once a second at most; a kept-alive connection would only save a
//! handshake and adds state to get wrong).
//!
//! `http://` is accepted only for the literal loopback addresses 127.0.0.1
//! and `[::1]`: a QBER value decides whether a link stays open, so a value
//! crossing any network must be authenticated (https with the configured
//! CA); a local agent on the same host is the one exception.
//!
//! The URL's path may hold `{qber_id}`: it is replaced by the link's
//! `qber_id`, percent-encoded, so one `[qber.X]` section can serve several
//! links of a per-link API.

pub use crate::engine::https::HttpSettings;

use crate::engine::https;
use crate::url::{Kind, Url};
use http_body_util::Full;
use hyper::body::Bytes;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use zeroize::Zeroizing;

/// The TLS settings of a `[qber.X]` section, as bytes read by the parent.
/// `ca` is required for https; `cert` and `key` (mutual TLS) go together.
#[derive(Clone, Default)]
pub struct TlsPems {
    pub ca: Option<Vec<u8>>,
    pub cert: Option<Vec<u8>>,
    pub key: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for TlsPems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TlsPems(ca: {}, cert: {}, key: {})",
            self.ca.is_some(),
            self.cert.is_some(),
            if self.key.is_some() {
                "<SECRET>"
            } else {
                "none"
            }
        )
    }
}

/// A GET client for one source.
#[derive(Clone)]
pub struct Getter {
    source: String,
    url: Url,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    settings: HttpSettings,
}

impl std::fmt::Debug for Getter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Getter(qber {} {})", self.source, self.display(""))
    }
}

impl Getter {
    /// `source` is the `[qber.NAME]`, used in every error.
    pub fn new(
        source: &str,
        url: &str,
        pems: &TlsPems,
        settings: HttpSettings,
    ) -> Result<Getter, String> {
        let err = |m: String| format!("qber {source}: {m}");
        let url = Url::parse(url, Kind::Qber).map_err(|e| err(format!("url: {e}")))?;
        let tls = if url.https {
            Some(connector(&url.host, pems).map_err(err)?)
        } else {
            None
        };
        Ok(Getter {
            source: source.to_string(),
            url,
            tls,
            settings,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the path names one link (`{qber_id}`).
    pub fn per_link(&self) -> bool {
        self.url.path.contains("{qber_id}")
    }

    /// The same client with another cap on an answer's size.
    pub fn with_max_body(mut self, max_body: usize) -> Getter {
        self.settings.max_body = max_body;
        self
    }

    fn path(&self, qber_id: &str) -> String {
        self.url.path.replace("{qber_id}", &https::encode(qber_id))
    }

    fn authority(&self) -> String {
        self.url.authority()
    }

    /// `scheme://host:port` of the source (its controls live under it).
    pub fn origin(&self) -> String {
        let scheme = if self.url.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// The URL polled for `qber_id`, for messages.
    pub fn display(&self, qber_id: &str) -> String {
        let scheme = if self.url.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority(), self.path(qber_id))
    }

    /// GETs the URL for `qber_id`; the body of a 200 answer. Errors read
    /// `qber NAME: GET URL: what`, with the HTTP status and the source's
    /// message if it answered.
    pub async fn get(&self, qber_id: &str, accept: &'static str) -> Result<Vec<u8>, String> {
        let path = self.path(qber_id);
        let r = match timeout(self.settings.timeout, self.exchange(&path, accept, None)).await {
            Ok(r) => r,
            Err(_) => Err("timeout".to_string()),
        };
        r.map_err(|e| format!("qber {}: GET {}: {e}", self.source, self.display(qber_id)))
    }

    /// POSTs a JSON `body` to the URL for `qber_id` followed by `suffix`
    /// (qkdsim's controls: `/eve`, `/noise`).
    pub async fn post(
        &self,
        qber_id: &str,
        suffix: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let path = format!("{}{suffix}", self.path(qber_id));
        let post = self.exchange(&path, "application/json", Some(body));
        let r = match timeout(self.settings.timeout, post).await {
            Ok(r) => r,
            Err(_) => Err("timeout".to_string()),
        };
        let url = format!("{}{suffix}", self.display(qber_id));
        r.map_err(|e| format!("qber {}: POST {url}: {e}", self.source))
    }

    async fn exchange(
        &self,
        path: &str,
        accept: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        let rt = self.settings.read_timeout;
        let (host, port) = (self.url.host.as_str(), self.url.port);
        // Plain http (loopback only) connects to the literal itself.
        let addr = self.tls.as_ref().and(self.settings.addr);
        let limit = self.settings.max_body;
        let tcp = https::tcp(addr, host, port, rt)
            .await
            .map_err(|f| text(f, limit))?;
        let Some((tls, name)) = &self.tls else {
            return self.request(tcp, path, accept, body).await;
        };
        let stream = https::tls(tls, name, tcp, rt)
            .await
            .map_err(|f| text(f, limit))?;
        self.request(stream, path, accept, body).await
    }

    async fn request<T>(
        &self,
        io: T,
        path: &str,
        accept: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limit = self.settings.max_body;
        let (mut sender, task) = https::http1(io).await.map_err(|f| text(f, limit))?;
        let task = AbortOnDrop(task);
        let req = match &body {
            None => hyper::Request::get(path),
            Some(_) => {
                hyper::Request::post(path).header(hyper::header::CONTENT_TYPE, "application/json")
            }
        }
        .header(hyper::header::HOST, self.authority())
        .header(hyper::header::ACCEPT, accept)
        .header(hyper::header::USER_AGENT, "qkdpfd")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("bad request: {e}"))?;
        let resp = match timeout(self.settings.read_timeout, sender.send_request(req)).await {
            Ok(r) => r.map_err(|e| text(https::classify(&e), limit))?,
            Err(_) => return Err("timeout (read)".into()),
        };
        let status = resp.status().as_u16();
        let mut body = https::read_body(resp, limit, self.settings.read_timeout)
            .await
            .map_err(|f| text(f, limit))?;
        drop(task);
        if status != 200 {
            return Err(format!("HTTP {status}: {}", message(&body)));
        }
        // A QBER reading is not secret: out of the zeroizing wrapper.
        Ok(std::mem::take(&mut *body))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A rustls connector for `host`, from the PEM bytes.
fn connector(
    host: &str,
    pems: &TlsPems,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    let ca = pems.ca.as_deref().ok_or("https needs a ca")?;
    let cfg = match (&pems.cert, &pems.key) {
        (Some(cert), Some(key)) => {
            crate::tls::client_config(ca, cert, key).map_err(|e| e.to_string())?
        }
        (None, None) => {
            let roots = crate::tls::roots_from_pem(ca).map_err(|e| e.to_string())?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| format!("tls: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(cfg)
        }
        _ => return Err("cert and key must be given together".into()),
    };
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| format!("bad server name {host:?}"))?;
    Ok((tokio_rustls::TlsConnector::from(cfg), name))
}

/// The message of an error answer: an ETSI-style `message` if the body is
/// such JSON, else the start of the body; cut short, escaped where it is
/// shown ([`crate::text::excerpt`]).
fn message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string));
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    crate::text::excerpt(text.trim(), 120)
}

/// The text of an error and every source below it.
/// A failed step in this getter's words (`qber NAME: GET URL: ` precedes it).
fn text(f: https::Failure, limit: usize) -> String {
    match f {
        https::Failure::Connect(e) => format!("connect: {e}"),
        https::Failure::Timeout(what) => format!("timeout ({what})"),
        https::Failure::Tls(e) => format!("TLS: {e}"),
        https::Failure::Http(e) => format!("HTTP: {e}"),
        https::Failure::TooLarge => format!("answer larger than {limit} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qber_id_is_encoded_into_the_path() {
        let pems = TlsPems::default();
        let g = Getter::new(
            "s",
            "http://127.0.0.1:1/q/{qber_id}",
            &pems,
            Default::default(),
        )
        .unwrap();
        assert_eq!(g.display("hq dr/1"), "http://127.0.0.1:1/q/hq%20dr%2F1");
        let e = Getter::new("s", "https://h/", &pems, Default::default()).unwrap_err();
        assert_eq!(e, "qber s: https needs a ca");
    }

    #[test]
    fn error_messages_are_cut_not_escaped() {
        assert_eq!(message(br#"{"message":"busy"}"#), "busy");
        assert_eq!(message(b"oops\n"), "oops");
        // The log escapes it, once.
        assert_eq!(message(b"a\x01b"), "a\x01b");
        assert_eq!(
            message("x".repeat(200).as_bytes()),
            format!("{}...", "x".repeat(120))
        );
    }

    #[test]
    fn pems_debug_hides_the_key() {
        let p = TlsPems {
            ca: Some(b"ca".to_vec()),
            cert: None,
            key: Some(Zeroizing::new(b"secret".to_vec())),
        };
        let d = format!("{p:?}");
        assert!(!d.contains("secret") && d.contains("<SECRET>"), "{d}");
    }
}
