//! The HTTP(S) client steps the engine's two clients share: the ETSI 014
//! KME client ([`super::kme`], pooled keep-alive connections) and the QBER
//! sources' getter ([`super::qber::fetch`]). Connect to the address the
//! parent resolved (the engine has no resolver) with a timeout, the TLS
//! handshake with a timeout, the HTTP/1.1 handshake, and reading an answer
//! with a size cap and a per-read timeout (slow-loris). Each client maps a
//! [`Failure`] to its own errors.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use zeroize::Zeroizing;

/// Limits of one client (a KME, a QBER source).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpSettings {
    /// The whole call: connect, TLS, request, answer.
    pub timeout: Duration,
    /// Connect, handshake, and each read of the answer.
    pub read_timeout: Duration,
    /// Largest answer body accepted.
    pub max_body: usize,
    /// Address resolved by the parent; `None` resolves the URL's host here
    /// (which fails in a chroot without resolv.conf).
    pub addr: Option<SocketAddr>,
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(2),
            max_body: 64 * 1024,
            addr: None,
        }
    }
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Connect(String),
    /// Which step took too long: "connect", "TLS handshake", "read".
    Timeout(&'static str),
    Tls(String),
    Http(String),
    /// The answer is larger than the cap.
    TooLarge,
}

/// Percent-encodes a path segment or query value (SAE IDs, key_IDs,
/// qber_ids): everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// TCP to `addr` (the parent's resolution) or else to `host:port`.
pub async fn tcp(
    addr: Option<SocketAddr>,
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<tokio::net::TcpStream, Failure> {
    let connect = async {
        match addr {
            Some(a) => tokio::net::TcpStream::connect(a).await,
            None => tokio::net::TcpStream::connect((host, port)).await,
        }
    };
    let s = match timeout(limit, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Connect(e.to_string())),
        Err(_) => return Err(Failure::Timeout("connect")),
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The TLS handshake over `tcp`, checking the server's name.
pub async fn tls(
    connector: &tokio_rustls::TlsConnector,
    name: &ServerName<'static>,
    tcp: tokio::net::TcpStream,
    limit: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Failure> {
    match timeout(limit, connector.connect(name.clone(), tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Failure::Tls(e.to_string())),
        Err(_) => Err(Failure::Timeout("TLS handshake")),
    }
}

/// An HTTP/1.1 connection over `io`; the task drives it until the sender
/// is dropped (abort it to stop at once).
pub async fn http1<T>(
    io: T,
) -> Result<(SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>), Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| classify(&e))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

/// Streams the answer with the cap and the per-read timeout. The buffer
/// is allocated once (growth leaves no copies of key bytes behind) and is
/// zeroized on drop.
pub async fn read_body(
    resp: hyper::Response<hyper::body::Incoming>,
    limit: usize,
    per_read: Duration,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let declared = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Failure::TooLarge);
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(limit));
    let mut body = resp.into_body();
    loop {
        let frame = match timeout(per_read, body.frame()).await {
            Err(_) => return Err(Failure::Timeout("read")),
            Ok(None) => return Ok(buf),
            Ok(Some(f)) => f.map_err(|e| classify(&e))?,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(Failure::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// A broken exchange: `Tls` if rustls is behind it (with TLS 1.3 a server
/// that rejects our certificate says so only after the handshake, at the
/// first read), else `Http`. The text follows the whole source chain, cut
/// short; it may quote the far side, and is escaped where it is shown (the
/// log's value rule), once ([`crate::text::excerpt`]).
pub fn classify(e: &hyper::Error) -> Failure {
    let mut text = e.to_string();
    let mut tls = false;
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        tls |= s.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>());
        src = s.source();
    }
    let text = crate::text::excerpt(&text, 200);
    if tls {
        Failure::Tls(text)
    } else {
        Failure::Http(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(encode("SAE A/1~x"), "SAE%20A%2F1~x");
    }

    #[tokio::test]
    async fn connect_failures_are_named() {
        // A port nothing listens on: refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let r = tcp(Some(addr), "ignored", 1, Duration::from_secs(2)).await;
        assert!(matches!(r, Err(Failure::Connect(_))), "{r:?}");
    }
}
