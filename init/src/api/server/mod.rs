//! The API's HTTP server: hyper on a small tokio runtime of its own thread, bounded in every
//! dimension a client chooses, because a client on the management network may be hostile and
//! this server lives inside PID 1 (an allocation failure there aborts the blade with every
//! guest on it).
//!
//! What a client cannot do, and what stops it:
//! - make us allocate what it announces: the request head is read into a buffer of at most
//!   [`Limits::max_head_bytes`] (hyper answers 431 beyond), and a body's `Content-Length` is
//!   checked against the route's cap before a byte of it is read (413 beyond); a chunked body
//!   is read through a counting limit too;
//! - hold a connection: the head must arrive within [`Limits::head_timeout`], the body within
//!   [`Limits::body_timeout`], and the whole exchange, answer included, within
//!   [`Limits::connection_timeout`]; connections are not kept alive;
//! - exhaust threads or sockets: idle connections cost a task, not a thread; at most
//!   [`Limits::max_connections`] hold a slot at once; a newcomer beyond them takes the slot of
//!   the oldest connection that has not sent a request head yet (closing it), and only when
//!   every slot carries a request is it answered 503 and closed;
//! - delay others: every handler runs on its own blocking thread (a slow LUN read or a main
//!   loop that takes its time holds only its own request).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

/// What the server accepts from one client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers.
    pub max_head_bytes: usize,
    /// Connections open at once (idle ones included); the excess is refused with 503.
    pub max_connections: usize,
    /// From accept to the end of the request head.
    pub head_timeout: Duration,
    /// From the end of the head to the end of the body.
    pub body_timeout: Duration,
    /// From accept to the last byte of the answer (covers a client that never reads it).
    pub connection_timeout: Duration,
    /// Threads running handlers at once; more requests wait for one.
    pub max_handler_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            // Each costs a descriptor; PID 1 raises its own limit to the kernel's hard one.
            max_connections: 768,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            // The main loop may take up to its own 30 s to answer (api::ask).
            connection_timeout: Duration::from_secs(45),
            max_handler_threads: 64,
        }
    }
}

/// A request as handlers see it: everything already read and bounded.
#[derive(Debug)]
pub struct ApiRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub authorization: Option<String>,
    /// None on the unix control socket.
    pub remote: Option<SocketAddr>,
    /// Some on a TLS listener: what the handshake established.
    pub tls: Option<TlsInfo>,
    pub body: Vec<u8>,
}

/// What a TLS handshake established about the client.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The certificate the client presented, verified against the cluster CA (None: it
    /// presented none, as operators' clients do).
    pub client_cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// A handler's answer.
#[derive(Debug, PartialEq)]
pub struct ApiResponse {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl ApiResponse {
    pub fn json(code: u16, body: String) -> Self {
        ApiResponse { code, content_type: "application/json", body }
    }
    /// `{"error": msg}` with `code`.
    pub fn error(code: u16, msg: &str) -> Self {
        Self::json(code, serde_json::json!({ "error": msg }).to_string())
    }
}

/// What the server hands requests to.
pub trait Handler: Send + Sync + 'static {
    /// The largest body this request may carry, decided from its method and target alone
    /// (before any of the body is read). Pure and quick: it runs on the runtime that reads
    /// sockets.
    fn body_limit(&self, method: &str, target: &str) -> usize;
    /// Runs on a blocking thread of its own: it may wait (for the main loop, a LUN).
    fn handle(&self, req: ApiRequest) -> ApiResponse;
}

/// Where the server listens.
pub enum Listener {
    Tcp(std::net::TcpListener),
    /// TCP with TLS: the handshake, bounded by the head timeout, comes before the request.
    Tls(std::net::TcpListener, Arc<rustls::ServerConfig>),
    Unix(std::os::unix::net::UnixListener),
}

/// Serves `listener` on a thread of its own until the process ends. Errors only when the
/// runtime cannot be built (no threads left).
pub fn serve(listener: Listener, handler: Arc<dyn Handler>, limits: Limits, name: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(limits.max_handler_threads.max(1))
        .thread_name(format!("api-{name}-handler"))
        .build()
        .map_err(|e| format!("cannot start the {name} API's runtime: {e}"))?;
    let name = name.to_string();
    crate::spawn_worker(&format!("api-{name}"), move || {
        rt.block_on(async move {
            if let Err(e) = accept_loop(listener, handler, limits, &name).await {
                tracing::error!(api = %name, "the API stopped accepting connections: {e}");
            }
        })
    });
    Ok(())
}

/// What every connection of one listener shares: the slots, and the connections that have not
/// yet sent a whole request head (the ones that may be closed to make room).
struct Shared {
    slots: Arc<tokio::sync::Semaphore>,
    idle: Mutex<IdleQueue>,
    handler: Arc<dyn Handler>,
    limits: Limits,
    /// Some on a TLS listener.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Failed handshakes are logged, one line per ten seconds.
    handshakes: Mutex<Throttle>,
    name: String,
}

/// Connections still waiting for their request head, oldest first. Each entry holds the
/// connection's slot and the means to close it: a newcomer that finds every slot taken takes
/// the oldest entry's slot at once, and closes its connection.
#[derive(Default)]
struct IdleQueue {
    next: u64,
    queue: VecDeque<IdleEntry>,
}

struct IdleEntry {
    id: u64,
    close: tokio::sync::oneshot::Sender<()>,
    permit: OwnedSemaphorePermit,
}

impl Shared {
    fn idle(&self) -> std::sync::MutexGuard<'_, IdleQueue> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the slot of the oldest connection that has not sent its request head yet, and
    /// tells that connection to close. None when every slot carries a request.
    fn evict_oldest_idle(&self) -> Option<OwnedSemaphorePermit> {
        let oldest = self.idle().queue.pop_front()?;
        // Its task may have ended already (the receiver is gone): the slot is free either way.
        let _ = oldest.close.send(());
        Some(oldest.permit)
    }

    /// Puts a newly accepted connection, with its slot, on the idle queue: it may be closed to
    /// make room until its request head is in.
    fn register_idle(&self, permit: OwnedSemaphorePermit) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (close, close_rx) = tokio::sync::oneshot::channel();
        let mut idle = self.idle();
        idle.next += 1;
        let id = idle.next;
        idle.queue.push_back(IdleEntry { id, close, permit });
        (id, close_rx)
    }

    /// Takes connection `id` off the idle queue, with its slot. None when it is not there
    /// (a newcomer took its slot, or it was taken off before).
    fn take_idle(&self, id: u64) -> Option<OwnedSemaphorePermit> {
        let mut idle = self.idle();
        let at = idle.queue.iter().position(|e| e.id == id)?;
        idle.queue.remove(at).map(|e| e.permit)
    }
}

/// One connection's hold on its slot. While the connection is idle, the slot sits on the idle
/// queue (where a newcomer may take it); once a whole request head is in, [`Slot::claim`] moves
/// it here, out of a newcomer's reach, until the connection ends. Dropping it (the connection's
/// task ends, however) frees the slot wherever it is.
struct Slot {
    shared: Arc<Shared>,
    id: u64,
    claimed: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Slot {
    /// The connection is a request now. False when a newcomer took its slot first (the
    /// connection is being closed).
    fn claim(&self) -> bool {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if claimed.is_none() {
            *claimed = self.shared.take_idle(self.id);
        }
        claimed.is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.take_idle(self.id);
    }
}

async fn accept_loop(listener: Listener, handler: Arc<dyn Handler>, limits: Limits, name: &str) -> std::io::Result<()> {
    let tls = match &listener {
        Listener::Tls(_, config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        _ => None,
    };
    let shared = Arc::new(Shared {
        slots: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
        idle: Mutex::new(IdleQueue::default()),
        handler,
        limits,
        tls,
        handshakes: Mutex::new(Throttle::new(Duration::from_secs(10))),
        name: name.to_string(),
    });
    let mut refused = Throttle::new(Duration::from_secs(10));
    match listener {
        Listener::Tcp(l) | Listener::Tls(l, _) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            loop {
                let (stream, peer) = match l.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(api = %name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, Some(peer), &shared, name, &mut refused);
            }
        }
        Listener::Unix(l) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::UnixListener::from_std(l)?;
            loop {
                match l.accept().await {
                    Ok((stream, _)) => spawn_connection(stream, None, &shared, name, &mut refused),
                    Err(e) => {
                        warn!(api = %name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 51\r\nConnection: close\r\n\r\n{\"error\":\"too many connections: try again shortly\"}";

fn spawn_connection<S>(stream: S, peer: Option<SocketAddr>, shared: &Arc<Shared>, name: &str, refused: &mut Throttle)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Full: make room by taking the slot of the oldest connection that has not even sent its
    // request head (an attacker's idle socket, most likely) and closing it, so that clients who
    // do send a request are served however many idle sockets are held open. The slot passes
    // from hand to hand at once: the newcomer waits for nothing. Only when every slot carries
    // a request is the newcomer refused.
    let permit = match shared.slots.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            let evicted = shared.evict_oldest_idle();
            if let Some(held_back) = refused.allow() {
                let what =
                    if evicted.is_some() { "closing the oldest idle connection" } else { "refusing a connection" };
                warn!(api = %name, remote = ?peer, held_back, "{what}: {} already open", shared.limits.max_connections);
            }
            evicted
        }
    };
    let Some(permit) = permit else {
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
        });
        return;
    };
    // Registered now, at accept, not when its task first runs: the accept loop takes a burst
    // of connections before any of their tasks runs, and a newcomer in that burst must find
    // the idle ones accepted before it already on the queue.
    let (id, close_rx) = shared.register_idle(permit);
    let slot = Arc::new(Slot { shared: shared.clone(), id, claimed: Mutex::new(None) });
    let limits = shared.limits.clone();
    tokio::spawn(async move {
        let work = serve_connection(stream, peer, slot);
        // Dropping the connection (at the deadline, or evicted while idle) closes the socket,
        // whatever it waited for.
        let mut work = std::pin::pin!(work);
        // Some until the connection claims its slot (the sender goes with its queue entry:
        // Err) or a newcomer takes the slot (Ok).
        let mut close_rx = Some(close_rx);
        let either = std::future::poll_fn(|cx| {
            use std::future::Future;
            use std::task::Poll;
            if work.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some(rx) = close_rx.as_mut() {
                match std::pin::Pin::new(rx).poll(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(()),
                    Poll::Ready(Err(_)) => close_rx = None,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        });
        let _ = tokio::time::timeout(limits.connection_timeout, either).await;
    });
}

/// One connection: its TLS handshake where the listener has TLS (a failed one is logged, with
/// the client's address), then one request.
async fn serve_connection<S>(stream: S, peer: Option<SocketAddr>, slot: Arc<Slot>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = slot.shared.clone();
    let Some(acceptor) = shared.tls.clone() else {
        return serve_http(stream, peer, None, slot).await;
    };
    let why = match tokio::time::timeout(shared.limits.head_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let client_cert =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
            return serve_http(tls, peer, Some(TlsInfo { client_cert }), slot).await;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no TLS handshake in time".to_string(),
    };
    let allowed = shared.handshakes.lock().unwrap_or_else(|p| p.into_inner()).allow();
    if let Some(held_back) = allowed {
        warn!(api = %shared.name, remote = ?peer, refused_since_last_line = held_back, "TLS handshake refused: {why}");
    }
}

async fn serve_http<S>(stream: S, peer: Option<SocketAddr>, tls: Option<TlsInfo>, slot: Arc<Slot>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = slot.shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = slot.shared.clone();
        let tls = tls.clone();
        // A whole head has arrived: this connection is a request now, not an idle socket.
        let claimed = slot.claim();
        async move {
            if !claimed {
                return Ok(to_hyper(ApiResponse::error(503, "too many connections: try again shortly")));
            }
            Ok::<_, std::convert::Infallible>(answer(req, peer, tls, shared.handler.clone(), &shared.limits).await)
        }
    });
    let limits = &shared.limits;
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = conn.await;
}

async fn answer(
    req: Request<Incoming>,
    remote: Option<SocketAddr>,
    tls: Option<TlsInfo>,
    handler: Arc<dyn Handler>,
    limits: &Limits,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(String::from);
    let cap = handler.body_limit(&method, &target);
    // hyper has parsed and checked Content-Length: its value is the body's exact size hint.
    if let Some(n) = hyper::body::Body::size_hint(req.body()).exact().filter(|n| *n > cap as u64) {
        return to_hyper(ApiResponse::error(
            413,
            &format!("this request's body may be at most {cap} bytes; it announced {n}"),
        ));
    }
    let body = match tokio::time::timeout(limits.body_timeout, Limited::new(req.into_body(), cap).collect()).await {
        Err(_) => return to_hyper(ApiResponse::error(408, "the request body did not arrive in time")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return to_hyper(ApiResponse::error(413, &format!("this request's body may be at most {cap} bytes")))
        }
        Ok(Err(e)) => return to_hyper(ApiResponse::error(400, &format!("reading the request body: {e}"))),
        Ok(Ok(b)) => b.to_bytes().to_vec(),
    };
    let req = ApiRequest { method, target, authorization, remote, tls, body };
    match blocking(move || handler.handle(req)).await {
        Ok(r) => to_hyper(r),
        Err(r) => r,
    }
}

/// Runs `f` on a blocking thread; a panic in it becomes a 500 for this request only.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response<Full<Bytes>>> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        let why = if e.is_panic() { crate::panic_message(&e.into_panic()) } else { e.to_string() };
        tracing::error!("API handler failed: {why}");
        to_hyper(ApiResponse::error(500, "internal error (logged on the blade)"))
    })
}

fn to_hyper(r: ApiResponse) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() = StatusCode::from_u16(r.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    resp
}

/// Lets one log line through per `period`, counting the ones it held back, so a flood of
/// hostile calls cannot flood the console.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Throttle { period, last: None, held_back: 0 }
    }

    /// Some(lines held back since the last one) when a line may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    pub fn allow_at(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.last.is_some_and(|l| now.saturating_duration_since(l) < self.period) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests;
