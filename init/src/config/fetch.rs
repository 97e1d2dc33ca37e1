//! Fetching configuration at boot: plain HTTP (what PXE deployments serve), retried until a
//! deadline, because the network or the server may come up after the blade. The server is not
//! trusted to be well-behaved: every fetch has an overall deadline and a size cap, and a reply
//! cut short is refused rather than parsed (a truncated file can still parse).

use std::io::Write;
use std::time::{Duration, Instant};

use super::error::shorten;
use crate::httpc::{read_before, Endpoint};

/// `http://host[:port]/path` or `https://...` split into an endpoint and a path. An `https://`
/// server's certificate must name the URL's host and be signed by the fetch CA (the kernel
/// command line's `bladevisor.fetch-ca=`, else the image's `/etc/bladevisor/fetch-ca.pem`).
pub fn parse_http_url(url: &str) -> Result<(Endpoint, String), String> {
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(format!("{url}: only http:// and https:// URLs are supported")),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let has_port = hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let default = if tls { 443 } else { 80 };
    let addr = if has_port { hostport.to_string() } else { format!("{hostport}:{default}") };
    if !tls {
        return Ok((Endpoint::Tcp(addr), path.to_string()));
    }
    let config = crate::tls::fetch_trust().ok_or_else(|| {
        format!(
            "{url}: no CA to verify it with (bladevisor.fetch-ca= on the kernel command line, or \
             /etc/bladevisor/fetch-ca.pem in the image)"
        )
    })?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
    let name = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((Endpoint::Tls { addr, name, config }, path.to_string()))
}

/// The most a configuration may be: far beyond any real cluster, far below what hurts a blade.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The most an alias file may be (tens of thousands of LUNs).
pub const MAX_ALIASES_BYTES: usize = 4 << 20;
/// The most a response's status line and headers may be.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// The longest one try may take, even with time left overall (a server that trickles).
const MAX_TRY: Duration = Duration::from_secs(30);

/// One GET that must complete by `deadline` and may bring at most `max_bytes`: a non-200
/// answer, a redirect, a reply cut short of its `Content-Length`, an oversized one and a slow
/// one are errors that name the URL. Chunked replies are decoded.
pub fn get(url: &str, deadline: Instant, max_bytes: usize) -> Result<String, String> {
    match get_if_changed(url, deadline, max_bytes, &Validators::default())? {
        Fetched::Body { text, .. } => Ok(text),
        Fetched::NotModified => Err(format!("{url}: HTTP 304 to an unconditional GET")),
    }
}

/// What a server said identifies a version of a file (its `ETag` and `Last-Modified`), sent
/// back as `If-None-Match` / `If-Modified-Since` so that an unchanged file costs a 304.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A conditional GET's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    NotModified,
    Body { text: String, validators: Validators },
}

/// A validator worth echoing: short, printable ASCII (it goes back into a request line).
fn validator(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
}

/// `get`, conditional on `known` (a 304 is `NotModified`).
pub fn get_if_changed(url: &str, deadline: Instant, max_bytes: usize, known: &Validators) -> Result<Fetched, String> {
    match request(url, deadline, max_bytes, known)? {
        None => Ok(Fetched::NotModified),
        Some((body, validators)) => {
            let text = String::from_utf8(body).map_err(|_| format!("{url}: the reply is not UTF-8 text"))?;
            Ok(Fetched::Body { text, validators })
        }
    }
}

/// `get` of a binary file (a kernel, an initrd): the bytes as they came.
pub fn get_bytes(url: &str, deadline: Instant, max_bytes: usize) -> Result<Vec<u8>, String> {
    match request(url, deadline, max_bytes, &Validators::default())? {
        Some((body, _)) => Ok(body),
        None => Err(format!("{url}: HTTP 304 to an unconditional GET")),
    }
}

/// One GET: the body and its validators, or None for a 304.
fn request(url: &str, deadline: Instant, max_bytes: usize, known: &Validators) -> Result<Option<Body>, String> {
    let (ep, path) = parse_http_url(url)?;
    let fail = |e: String| format!("{url}: {e}");
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(fail("no time left".into()));
    }
    let (hostport, default) = match &ep {
        Endpoint::Tls { addr, .. } => (addr.as_str(), ":443"),
        Endpoint::Tcp(addr) => (addr.as_str(), ":80"),
        Endpoint::Unix(_) => return Err(fail("not a TCP URL".into())),
    };
    let host = hostport.strip_suffix(default).unwrap_or(hostport).to_string();
    let mut stream =
        crate::httpc::open(&ep, left).map_err(|e| fail(e.split_once(": ").map_or(e.clone(), |x| x.1.to_string())))?;
    let mut conditions = String::new();
    if let Some(e) = validator(known.etag.clone()) {
        conditions.push_str(&format!("If-None-Match: {e}\r\n"));
    }
    if let Some(m) = validator(known.last_modified.clone()) {
        conditions.push_str(&format!("If-Modified-Since: {m}\r\n"));
    }
    // One write: a request in several segments may meet a server that reads only the first.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept-Encoding: identity\r\n{conditions}\r\n"
    );
    stream.write_all(request.as_bytes()).and_then(|_| stream.flush()).map_err(|e| fail(crate::httpc::tls_error(&e)))?;
    let mut r = Bounded { stream, deadline, buf: Vec::new() };
    r.response(max_bytes).map_err(fail)
}

/// A reply's body and what identifies its version.
type Body = (Vec<u8>, Validators);

/// A response read from a stream with a deadline on every read.
struct Bounded {
    stream: crate::httpc::Conn,
    deadline: Instant,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
}

impl Bounded {
    /// Reads more into `buf`; Ok(0) at EOF.
    fn fill(&mut self) -> Result<usize, String> {
        read_before(&mut self.stream, self.deadline, |s, t| s.set_read_timeout(t), &mut self.buf)
    }

    fn response(&mut self, max_bytes: usize) -> Result<Option<Body>, String> {
        // The head: status line and headers, bounded.
        let (code, reason, head_len, length, chunked, location, validators) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
                    return Err(format!("response head larger than {MAX_HEAD_BYTES} bytes"))
                }
                Ok(httparse::Status::Complete(n)) => {
                    let header = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                    };
                    let te = header("transfer-encoding");
                    if te.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("chunked")) {
                        return Err(format!(
                            "transfer encoding {:?} is not supported",
                            shorten(&te.unwrap_or_default(), 40)
                        ));
                    }
                    let length = match header("content-length") {
                        Some(l) => {
                            Some(l.parse::<u64>().map_err(|_| format!("bad Content-Length {:?}", shorten(&l, 40)))?)
                        }
                        None => None,
                    };
                    break (
                        resp.code.unwrap_or(0),
                        resp.reason.unwrap_or("").to_string(),
                        n,
                        length,
                        te.is_some(),
                        header("location"),
                        Validators {
                            etag: validator(header("etag")),
                            last_modified: validator(header("last-modified")),
                        },
                    );
                }
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD_BYTES => {
                    if self.fill()? == 0 {
                        return Err("the connection closed before a complete HTTP response head".into());
                    }
                }
                Ok(httparse::Status::Partial) => {
                    return Err(format!("response head larger than {MAX_HEAD_BYTES} bytes"))
                }
                Err(e) => return Err(format!("malformed HTTP response: {e}")),
            }
        };
        if code == 304 {
            return Ok(None);
        }
        if (300..400).contains(&code) {
            return Err(format!(
                "HTTP {code} redirect to {:?}: redirects are not followed; give the blade the final URL",
                shorten(&location.unwrap_or_default(), 200)
            ));
        }
        if code != 200 {
            return Err(format!("HTTP {code} {}", shorten(&reason, 60)).trim_end().to_string());
        }
        self.buf.drain(..head_len);
        let too_big = |n: u64| format!("the reply is {n} bytes; at most {max_bytes} are accepted here");
        let body = if chunked {
            self.chunked(max_bytes)?
        } else if let Some(n) = length {
            if n > max_bytes as u64 {
                return Err(too_big(n));
            }
            while (self.buf.len() as u64) < n {
                if self.fill()? == 0 {
                    return Err(format!("the reply ended after {} of its {n} bytes", self.buf.len()));
                }
            }
            self.buf.truncate(n as usize);
            std::mem::take(&mut self.buf)
        } else {
            while self.buf.len() <= max_bytes && self.fill()? > 0 {}
            if self.buf.len() > max_bytes {
                return Err(format!("the reply is more than the {max_bytes} bytes accepted here"));
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Some((body, validators)))
    }

    /// Decodes a chunked body of at most `max_bytes`.
    fn chunked(&mut self, max_bytes: usize) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let (size, used) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => break (size, used),
                    Ok(httparse::Status::Partial) if self.buf.len() < 1024 => {
                        if self.fill()? == 0 {
                            return Err("the reply ended inside a chunk header".into());
                        }
                    }
                    _ => return Err("malformed chunked encoding".into()),
                }
            };
            if size > (max_bytes - body.len()) as u64 {
                return Err(format!("the reply is more than the {max_bytes} bytes accepted here"));
            }
            let size = size as usize;
            self.buf.drain(..used);
            // The chunk's data and its CRLF.
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    return Err("the reply ended inside a chunk".into());
                }
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err("malformed chunked encoding".into());
            }
            if size == 0 {
                // The last chunk (trailers, if any, are not read).
                return Ok(body);
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

/// GETs `url` until it answers 200 or `limit` is over, waiting `pause` between tries (with a
/// note of each failure via `on_retry`); no try outlives `limit`, whatever the server does.
/// Returns the body, or the last error and the tries made.
pub fn get_with_retries(
    url: &str,
    limit: Duration,
    pause: Duration,
    max_bytes: usize,
    mut on_retry: impl FnMut(u32, &str),
) -> Result<String, (String, u32)> {
    let end = Instant::now() + limit;
    let mut tries = 0;
    loop {
        tries += 1;
        // At least a moment for a try, even when the limit is zero.
        let try_end = (Instant::now() + MAX_TRY).min(end).max(Instant::now() + Duration::from_millis(200));
        match get(url, try_end, max_bytes) {
            Ok(body) => return Ok(body),
            Err(e) => {
                if Instant::now() + pause >= end {
                    return Err((e, tries));
                }
                on_retry(tries, &e);
                std::thread::sleep(pause);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn urls_are_split_into_host_and_path() {
        let (ep, path) = parse_http_url("http://10.0.2.2:8000/cluster.toml").unwrap();
        assert_eq!(ep.to_string(), "http://10.0.2.2:8000");
        assert_eq!(path, "/cluster.toml");
        let (ep, path) = parse_http_url("http://deploy").unwrap();
        assert_eq!((ep.to_string(), path.as_str()), ("http://deploy:80".to_string(), "/"));
        assert!(parse_http_url("ftp://x/y").unwrap_err().contains("only http:// and https://"));
        assert!(parse_http_url("http:///y").unwrap_err().contains("no host"));
    }

    /// A server that answers 503 `fails` times, then serves `body`.
    fn flaky_server(fails: usize, body: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let resp = if i < fails {
                    "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_string()
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        format!("http://{addr}/cluster.toml")
    }

    /// A server like nginx: an ETag on every answer, 304 when the request names it.
    fn etag_server(etag: &'static str, body: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.contains(&format!("If-None-Match: {etag}\r\n")) {
                    format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n")
                } else {
                    format!("HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                };
                let _ = tx.send(req);
                let _ = s.write_all(resp.as_bytes());
            }
        });
        (format!("http://{addr}/aliases"), rx)
    }

    #[test]
    fn a_conditional_get_of_an_unchanged_file_is_not_modified() {
        let (url, asked) = etag_server("\"v1\"", "vm1 3600a\n");
        let soon = || Instant::now() + Duration::from_secs(5);
        let first = get_if_changed(&url, soon(), 4096, &Validators::default()).unwrap();
        let Fetched::Body { text, validators } = first else { panic!("{first:?}") };
        assert_eq!(text, "vm1 3600a\n");
        assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
        assert!(!asked.recv().unwrap().contains("If-None-Match"));
        assert_eq!(get_if_changed(&url, soon(), 4096, &validators).unwrap(), Fetched::NotModified);
        assert!(asked.recv().unwrap().contains("If-None-Match: \"v1\"\r\n"));
        // A validator that could break the request line is not echoed.
        let evil = Validators { etag: Some("\"x\"\r\nX-Evil: 1".into()), last_modified: None };
        assert!(matches!(get_if_changed(&url, soon(), 4096, &evil).unwrap(), Fetched::Body { .. }));
        assert!(!asked.recv().unwrap().contains("X-Evil"));
    }

    #[test]
    fn a_server_that_comes_up_late_is_waited_for() {
        let url = flaky_server(2, "[cluster]\nname = \"x\"\n");
        let mut retries = vec![];
        let body = get_with_retries(&url, Duration::from_secs(10), Duration::from_millis(10), 4096, |n, e| {
            retries.push((n, e.to_string()))
        })
        .unwrap();
        assert_eq!(body, "[cluster]\nname = \"x\"\n");
        assert_eq!(retries.len(), 2);
        assert!(retries[0].1.ends_with("HTTP 503 Busy"), "{retries:?}");
    }

    #[test]
    fn an_unreachable_url_gives_up_at_the_deadline_with_the_last_error() {
        // A port nothing listens on: bind one, then close it.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/c.toml");
        let (err, tries) =
            get_with_retries(&url, Duration::from_millis(300), Duration::from_millis(50), 4096, |_, _| {}).unwrap_err();
        assert!(err.starts_with(&url) && err.contains("refused"), "{err}");
        assert!(tries >= 2, "{tries}");
    }

    /// A server that answers every connection with `reply` (written in pieces `delay` apart).
    fn serving(reply: Vec<Vec<u8>>, delay: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    for piece in reply {
                        if s.write_all(&piece).is_err() {
                            return;
                        }
                        std::thread::sleep(delay);
                    }
                });
            }
        });
        format!("http://{addr}/aliases")
    }

    fn once(reply: &str) -> Result<String, String> {
        let url = serving(vec![reply.as_bytes().to_vec()], Duration::ZERO);
        get(&url, Instant::now() + Duration::from_secs(5), 64)
    }

    #[test]
    fn a_reply_is_taken_only_whole_within_its_size_cap() {
        assert_eq!(once("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap(), "abc");
        assert_eq!(once("HTTP/1.1 200 OK\r\n\r\nto the end").unwrap(), "to the end");
        let e = once("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap_err();
        assert!(e.ends_with("the reply ended after 3 of its 10 bytes"), "a truncated file is not used: {e}");
        let e = once("HTTP/1.1 200 OK\r\nContent-Length: 4611686018427387904\r\n\r\n").unwrap_err();
        assert!(e.ends_with("the reply is 4611686018427387904 bytes; at most 64 are accepted here"), "{e}");
        let e = once(&format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(100))).unwrap_err();
        assert!(e.contains("more than the 64 bytes accepted here"), "{e}");
        let e = once("HTTP/1.1 302 Found\r\nLocation: http://elsewhere/a\r\n\r\n").unwrap_err();
        assert!(e.contains("redirect to \"http://elsewhere/a\": redirects are not followed"), "{e}");
        let e = once(&format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "h".repeat(20 << 10))).unwrap_err();
        assert!(e.contains("response head larger than"), "{e}");
        let url = serving(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe".to_vec()], Duration::ZERO);
        let e = get(&url, Instant::now() + Duration::from_secs(5), 64).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn chunked_replies_are_decoded_and_bounded() {
        let ok = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(once(ok).unwrap(), "abcde");
        let big = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n{}\r\n0\r\n\r\n", "y".repeat(80));
        assert!(once(&big).unwrap_err().contains("more than the 64 bytes"));
        let cut = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc";
        assert!(once(cut).unwrap_err().contains("ended inside a chunk"));
    }

    #[test]
    fn a_server_that_trickles_is_given_up_on_at_the_deadline() {
        // One byte every 200 ms, for ever (as far as the client can tell).
        let mut pieces = vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec()];
        pieces.extend(std::iter::repeat_n(b"a".to_vec(), 1000));
        let url = serving(pieces, Duration::from_millis(200));
        let t = Instant::now();
        let (e, _) =
            get_with_retries(&url, Duration::from_secs(2), Duration::from_millis(100), 4096, |_, _| {}).unwrap_err();
        assert!(e.ends_with("the reply did not complete in time"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4), "the overall deadline holds: {:?}", t.elapsed());
    }

    /// A deployment server over TLS with a certificate for 127.0.0.1 signed by `ca`: answers
    /// every request with `body`.
    fn https_server(ca: &crate::tls::pki::Issued, body: &'static str) -> u16 {
        let b = crate::tls::pki::issue(&ca.cert, &ca.key, "deploy", &["127.0.0.1".parse().unwrap()], 30).unwrap();
        let pem = crate::tls::Pem { ca: ca.cert.clone(), cert: b.cert, key: b.key };
        let config = crate::tls::ClusterTls::new("t", "deploy", pem).unwrap().server;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut b) {
                        Ok(n) if n > 0 => req.extend_from_slice(&b[..n]),
                        _ => break,
                    }
                }
                let _ = write!(tls, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        port
    }

    #[test]
    fn an_https_url_is_fetched_only_from_a_server_the_fetch_ca_signed() {
        let ca = crate::tls::pki::new_ca("deploy").unwrap();
        let port = https_server(&ca, "[cluster]\n");
        let url = format!("https://127.0.0.1:{port}/cluster.toml");
        let soon = || Instant::now() + Duration::from_secs(10);
        if crate::tls::fetch_trust().is_none() {
            let e = get(&url, soon(), 1000).unwrap_err();
            assert!(e.contains("no CA to verify it with (bladevisor.fetch-ca="), "{e}");
        }
        // The CA as the kernel command line gives it: base64 of its DER.
        let der = crate::tls::certs_from_pem("ca", &ca.cert).unwrap().remove(0);
        let b64: String = ca.cert.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(crate::tls::certs_from_pem("cmdline", &crate::tls::pem_of_base64(&b64)).unwrap()[0], der);
        crate::tls::set_fetch_trust("bladevisor.fetch-ca=", &crate::tls::pem_of_base64(&b64)).unwrap();
        assert_eq!(get(&url, soon(), 1000), Ok("[cluster]\n".to_string()));
        // A server another CA signed (a man in the middle) is refused, naming why.
        let mallory = https_server(&crate::tls::pki::new_ca("mallory").unwrap(), "[cluster]\nevil = 1\n");
        let e = get(&format!("https://127.0.0.1:{mallory}/cluster.toml"), soon(), 1000).unwrap_err();
        assert!(e.contains("certificate is not one the CA trusted here signed"), "{e}");
    }
}
