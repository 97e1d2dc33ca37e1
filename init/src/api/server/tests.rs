use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Echoes the body's length; `/slow` takes two seconds.
struct Echo {
    handled: AtomicUsize,
    /// Request heads seen (the server asks for the body's limit once a head is in).
    heads: AtomicUsize,
}

impl Handler for Echo {
    fn body_limit(&self, _method: &str, target: &str) -> usize {
        self.heads.fetch_add(1, Ordering::SeqCst);
        if target == "/upload" {
            1024
        } else {
            0
        }
    }
    fn handle(&self, req: ApiRequest) -> ApiResponse {
        self.handled.fetch_add(1, Ordering::SeqCst);
        if req.target == "/slow" {
            std::thread::sleep(Duration::from_secs(2));
        }
        if req.target == "/panic" {
            panic!("handler bug");
        }
        ApiResponse::json(200, format!("{{\"len\":{}}}", req.body.len()))
    }
}

fn server(limits: Limits) -> (SocketAddr, Arc<Echo>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let echo = Arc::new(Echo { handled: AtomicUsize::new(0), heads: AtomicUsize::new(0) });
    serve(Listener::Tcp(l), echo.clone(), limits, "test").unwrap();
    (addr, echo)
}

fn quick() -> Limits {
    Limits {
        head_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        connection_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// Sends raw bytes and returns whatever the server answers before closing (or 10 s).
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    raw(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
}

#[test]
fn an_enormous_content_length_is_refused_before_anything_is_read_or_allocated() {
    let (addr, echo) = server(quick());
    let r = raw(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4611686018427387904\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    let r = raw(addr, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 413") && r.contains("at most 1024 bytes"), "{r}");
    assert_eq!(echo.handled.load(Ordering::SeqCst), 0, "no handler ran");
    assert!(get(addr, "/v1/status").starts_with("HTTP/1.1 200"), "the server still serves");
}

#[test]
fn a_chunked_body_is_counted_as_it_arrives() {
    let (addr, _) = server(quick());
    let big = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "a".repeat(2048)
    );
    let r = raw(addr, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    let small = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let r = raw(addr, small.as_bytes());
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("{\"len\":3}"), "{r}");
}

#[test]
fn a_body_promised_and_never_sent_times_out_without_holding_up_others() {
    let (addr, _) = server(quick());
    let mut lying = TcpStream::connect(addr).unwrap();
    lying.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc").unwrap();
    // Meanwhile others are served at once.
    assert!(get(addr, "/v1/status").starts_with("HTTP/1.1 200"));
    lying.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    let _ = lying.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "the liar is answered and closed: {out:?}");
}

#[test]
fn an_oversized_head_is_refused_and_idle_connections_are_closed() {
    let (addr, echo) = server(quick());
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n", "j".repeat(4 << 20));
    let r = raw(addr, huge.as_bytes());
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(64 << 10));
    let r = raw(addr, long_line.as_bytes());
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 4"), "{r}");
    // Someone connects and says nothing: closed after the head timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = idle.read_to_end(&mut out);
    assert!(t.elapsed() < Duration::from_secs(8), "closed after the head timeout, not held");
    assert_eq!(echo.handled.load(Ordering::SeqCst), 0);
}

#[test]
fn idle_connections_beyond_the_cap_make_room_for_requests_and_busy_ones_are_refused() {
    // Kept under a 1024-descriptor limit with both ends in this process.
    let (addr, _) = server(Limits { max_connections: 200, head_timeout: Duration::from_secs(20), ..quick() });
    let idle: Vec<TcpStream> = (0..260).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    assert!(idle.len() >= 250, "{} connections", idle.len());
    // Every slot is taken by a client that sends nothing: each new request closes the
    // oldest of them and is served.
    for _ in 0..20 {
        let r = get(addr, "/v1/status");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    drop(idle);
    // Slots taken by requests (their heads in, their bodies awaited) are not taken away:
    // with all of them taken so, a newcomer is refused. (A fresh server: no idle leftovers.)
    let (addr, echo) = server(Limits {
        max_connections: 200,
        body_timeout: Duration::from_secs(20),
        connection_timeout: Duration::from_secs(30),
        ..quick()
    });
    let busy: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(busy.len(), 200);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while echo.heads.load(Ordering::SeqCst) < 200 {
        assert!(std::time::Instant::now() < end, "the busy requests' heads did not all arrive");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = get(addr, "/v1/status");
    assert!(r.starts_with("HTTP/1.1 503") && r.contains("too many connections"), "{r}");
    drop(busy);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !get(addr, "/v1/status").starts_with("HTTP/1.1 200") {
        assert!(std::time::Instant::now() < end, "service did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_slow_handler_holds_only_its_own_request_and_a_panicking_one_answers_500() {
    let (addr, _) = server(quick());
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    std::thread::sleep(Duration::from_millis(200));
    let t = std::time::Instant::now();
    assert!(get(addr, "/v1/status").starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() < Duration::from_millis(1500), "not queued behind the slow one");
    assert!(slow.join().unwrap().starts_with("HTTP/1.1 200"));
    let r = get(addr, "/panic");
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(get(addr, "/v1/status").starts_with("HTTP/1.1 200"), "the server survives");
}

#[test]
fn the_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
    let mut t = Throttle::new(Duration::from_secs(10));
    let t0 = std::time::Instant::now();
    assert_eq!(t.allow_at(t0), Some(0));
    assert_eq!(t.allow_at(t0 + Duration::from_secs(1)), None);
    assert_eq!(t.allow_at(t0 + Duration::from_secs(2)), None);
    assert_eq!(t.allow_at(t0 + Duration::from_secs(11)), Some(2));
}

/// Answers with the name the client's certificate holds (`blade1`, `blade2`) or `none`.
struct WhoAsks;

impl Handler for WhoAsks {
    fn body_limit(&self, _: &str, _: &str) -> usize {
        0
    }
    fn handle(&self, req: ApiRequest) -> ApiResponse {
        let cert = req.tls.as_ref().and_then(|t| t.client_cert.as_ref());
        let who = ["blade1", "blade2"].into_iter().find(|n| cert.is_some_and(|c| crate::tls::names(c, n)));
        let who = if cert.is_some() { who.unwrap_or("someone") } else { "none" };
        ApiResponse::json(200, format!("{{\"tls\":{},\"who\":\"{who}\"}}", req.tls.is_some()))
    }
}

#[test]
fn over_tls_the_server_is_verified_and_a_client_certificate_is_verified_before_any_request() {
    use crate::httpc::{call, Endpoint};
    use crate::tls::pki::{issue, new_ca};
    let ca = new_ca("lab").unwrap();
    let pem = |ca: &crate::tls::pki::Issued, node: &str| {
        let b = issue(&ca.cert, &ca.key, node, &[], 30).unwrap();
        crate::tls::Pem { ca: ca.cert.clone(), cert: b.cert, key: b.key }
    };
    let blade1 = crate::tls::ClusterTls::new("t", "blade1", pem(&ca, "blade1")).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    serve(Listener::Tls(l, blade1.server.clone()), Arc::new(WhoAsks), quick(), "tls").unwrap();
    let ep = |name: &str, config| Endpoint::Tls { addr: addr.clone(), name: name.into(), config };
    let t = Duration::from_secs(10);

    // An operator: verifies blade1, presents nothing.
    let operator = crate::tls::operator_client("ca.pem", &ca.cert).unwrap();
    let r = call(&ep("blade1", operator.clone()), "GET", "/v1/status", None, t).unwrap();
    assert_eq!((r.code, r.body.as_str()), (200, r#"{"tls":true,"who":"none"}"#));
    // Another blade presents its own certificate, and it is seen verified.
    let blade2 = crate::tls::ClusterTls::new("t", "blade2", pem(&ca, "blade2")).unwrap();
    let r = call(&ep("blade1", blade2.client.clone()), "GET", "/v1/status", None, t).unwrap();
    assert_eq!(r.body, r#"{"tls":true,"who":"blade2"}"#);
    // The CLI meant another blade: blade1's certificate does not name it.
    let e = call(&ep("blade2", operator), "GET", "/v1/status", None, t).err().unwrap();
    assert!(e.contains("certificate is not one the CA trusted here signed for this name"), "{e}");
    // A client that trusts another CA refuses blade1.
    let other = new_ca("other").unwrap();
    let stranger = crate::tls::operator_client("other.pem", &other.cert).unwrap();
    let e = call(&ep("blade1", stranger), "GET", "/v1/status", None, t).err().unwrap();
    assert!(e.contains("not one the CA trusted here signed"), "{e}");
    // A client with a certificate of another CA (trusting ours) is refused at the handshake.
    let forged = crate::tls::Pem { ca: ca.cert.clone(), ..pem(&other, "blade2") };
    let forged_client = crate::tls::client_presenting_pem("forged", &ca.cert, &forged.cert, &forged.key).unwrap();
    let r = call(&ep("blade1", forged_client), "GET", "/v1/status", None, t);
    assert!(r.is_err(), "a foreign certificate gets no answer: {:?}", r.map(|r| r.body));
    // Plain HTTP on the TLS port gets no answer at all.
    let r = raw(addr.parse().unwrap(), b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!r.contains("200"), "{r}");
}
