//! HTTP/1.1 server for the Prometheus endpoint, run by the engine on the
//! listener it is given. It reads the latest [`Snapshot`] from a watch
//! channel and touches nothing else: `GET /metrics` is the only thing it
//! answers with data.
//!
//! Limits, because the endpoint may face a monitoring network: at most
//! `max_connections` at once (accept waits for a free slot), one request per
//! connection, request headers within `header_timeout` (slow-loris), the
//! whole connection within `connection_timeout` (a client that never reads
//! its answer), a 16 KiB read buffer, and no request bodies.

use crate::engine::metrics::{CONTENT_TYPE, Snapshot, render_at};
use crate::log;

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE as CT, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Largest request head hyper buffers (its minimum is 8 KiB).
const READ_BUFFER: usize = 16 * 1024;

/// How much a client may take from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// From accept to the end of the request head.
    pub header_timeout: Duration,
    /// From accept to the last byte of the answer.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 32,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(15),
        }
    }
}

/// Serves `/metrics` with the default [`Limits`] until accepting fails for
/// good; returns that error. Never panics.
pub async fn serve(listener: TcpListener, snapshots: watch::Receiver<Snapshot>) -> io::Error {
    serve_with(listener, snapshots, Limits::default()).await
}

/// [`serve`] with chosen limits (tests shorten the timeouts).
pub async fn serve_with(
    listener: TcpListener,
    snapshots: watch::Receiver<Snapshot>,
    limits: Limits,
) -> io::Error {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return io::Error::other("metrics: connection slots closed");
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) if transient(&e) => {
                log::debug(format!("metrics: accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return e,
        };
        while conns.try_join_next().is_some() {}
        let rx = snapshots.clone();
        conns.spawn(async move {
            connection(tcp, rx, limits).await;
            drop(permit);
        });
    }
}

/// Errors that concern one connection or a passing shortage, not the listener.
fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) {
        return true;
    }
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO | libc::EPERM
        )
    )
}

async fn connection(tcp: TcpStream, snapshots: watch::Receiver<Snapshot>, limits: Limits) {
    let _ = tcp.set_nodelay(true);
    serve_connection(tcp, snapshots, limits).await
}

/// One connection's exchange on any byte stream: a TCP connection here,
/// an in-memory pipe in the fuzz target. Never panics.
pub async fn serve_connection<S>(io: S, snapshots: watch::Receiver<Snapshot>, limits: Limits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let answer = metrics_answer(&req, &snapshots);
        async move { Ok::<_, Infallible>(answer) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(READ_BUFFER)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    match tokio::time::timeout(limits.connection_timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug(format!("metrics: connection: {e}")),
        Err(_) => log::debug("metrics: connection timed out"),
    }
}

/// The router: the path first, then the method, then the body.
fn metrics_answer(
    req: &Request<Incoming>,
    snapshots: &watch::Receiver<Snapshot>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if !req.body().is_end_stream() {
        return text(StatusCode::BAD_REQUEST, "request bodies are not accepted\n");
    }
    // Render under the borrow: no await while it is held.
    let body = render_at(&snapshots.borrow(), Instant::now());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CT, HeaderValue::from_static(CONTENT_TYPE));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CT, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
