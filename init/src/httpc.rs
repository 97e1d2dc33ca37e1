//! A small HTTP/1.1 client for the CLI: the control socket (unix) or a blade's API (TCP).
//! The requests are tiny and one-shot, so `Connection: close` and reading to EOF suffice.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`
    Tcp(String),
    /// `host:port` over TLS, whose certificate must name `name` (a blade's name, a host name or
    /// an address), verified with `config`'s roots.
    Tls {
        addr: String,
        name: String,
        config: std::sync::Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
            Endpoint::Tls { addr, name, .. } if addr.split(':').next() == Some(name.as_str()) => {
                write!(f, "https://{addr}")
            }
            Endpoint::Tls { addr, name, .. } => write!(f, "https://{addr} ({name})"),
        }
    }
}

pub struct Response {
    pub code: u16,
    pub body: String,
    /// The server used chunked transfer encoding (the body is then not decoded).
    pub chunked: bool,
}

/// Splits a raw HTTP response into status code and body (tiny_http answers with a length).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response (no header end)")?;
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(Response { code, body: body.to_string(), chunked })
}

pub fn call(
    ep: &Endpoint,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, String> {
    call_with_body(ep, method, path, token, "", timeout)
}

/// `call` with a JSON request body.
pub fn call_with_body(
    ep: &Endpoint,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<Response, String> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let host = match ep {
        Endpoint::Tcp(a) | Endpoint::Tls { addr: a, .. } => a.as_str(),
        Endpoint::Unix(_) => "localhost",
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    );
    let deadline = std::time::Instant::now() + timeout;
    let mut conn = open(ep, timeout)?;
    // On TLS the handshake happens on this first write: a certificate that does not verify is an
    // error here, before the request (and its token) is sent.
    conn.write_all(req.as_bytes()).and_then(|_| conn.flush()).map_err(|e| format!("{ep}: {}", tls_error(&e)))?;
    let raw = read_bounded(&mut conn, deadline, |c, t| c.set_read_timeout(t)).map_err(|e| format!("{ep}: {e}"))?;
    parse_response(&raw).map_err(|e| format!("{ep}: {e}"))
}

/// A connection to an endpoint: a unix socket, TCP, or TLS over TCP (verified at its first
/// write).
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Tls(s) => s.sock.set_read_timeout(t),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `ep` within `timeout` (writes bounded by it too).
pub fn open(ep: &Endpoint, timeout: Duration) -> Result<Conn, String> {
    let io = |e: std::io::Error| format!("{ep}: {e}");
    match ep {
        Endpoint::Unix(p) => {
            let s = UnixStream::connect(p).map_err(io)?;
            s.set_write_timeout(Some(timeout)).map_err(io)?;
            Ok(Conn::Unix(s))
        }
        Endpoint::Tcp(a) => connect(a, timeout).map(Conn::Tcp).map_err(io),
        Endpoint::Tls { addr, name, config } => {
            let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("{ep}: {name:?} is not a name a certificate can hold ({e})"))?;
            let conn = rustls::ClientConnection::new(config.clone(), server_name).map_err(|e| format!("{ep}: {e}"))?;
            Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, connect(addr, timeout).map_err(io)?))))
        }
    }
}

/// A TCP connection to `host:port` within `timeout`, writes bounded by it too.
fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let a = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let s = TcpStream::connect_timeout(&a, timeout)?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// A TLS failure in words an operator acts on.
pub fn tls_error(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the server's certificate is not one the CA trusted here signed for this name ({c:?}): refused")
        }
        Some(rustls::Error::AlertReceived(a)) => format!("the server refused the TLS handshake ({a:?})"),
        _ => e.to_string(),
    }
}

/// The largest answer taken from a blade: a status of thousands of LUNs and guests fits many
/// times over; PID 1 calls its peers with this client, and a peer is not trusted with its memory.
pub const MAX_RESPONSE: usize = 16 << 20;

/// Reads to EOF, at most [`MAX_RESPONSE`] bytes, all of it by `deadline`.
fn read_bounded<S: Read>(
    s: &mut S,
    deadline: std::time::Instant,
    set_timeout: impl Fn(&S, Option<Duration>) -> std::io::Result<()>,
) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    while read_before(s, deadline, &set_timeout, &mut raw)? > 0 {
        if raw.len() > MAX_RESPONSE {
            return Err(format!("answer larger than {MAX_RESPONSE} bytes"));
        }
    }
    Ok(raw)
}

/// One read of at most 16 KiB appended to `buf`, which must come before `deadline`; Ok(0) at
/// EOF. What every reader of a peer or a server that may be slow on purpose builds on.
pub fn read_before<S: Read>(
    s: &mut S,
    deadline: std::time::Instant,
    set_timeout: impl Fn(&S, Option<Duration>) -> std::io::Result<()>,
    buf: &mut Vec<u8>,
) -> Result<usize, String> {
    let late = || "the reply did not complete in time".to_string();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        set_timeout(s, Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(late())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_split_into_code_and_body() {
        let r = parse_response(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.code, r.body.as_str()), (401, "{}"));
        assert!(parse_response(b"garbage").is_err());
    }
}
