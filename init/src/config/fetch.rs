//! Fetching configuration at boot: plain HTTP (what PXE deployments serve), retried until a
//! deadline, because the network or the server may come up after the blade.

use std::time::{Duration, Instant};

use crate::api::client::{call, Endpoint};

/// `http://host[:port]/path` split into an endpoint and a path.
pub fn parse_http_url(url: &str) -> Result<(Endpoint, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let hostport = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
    Ok((Endpoint::Tcp(hostport), path.to_string()))
}

/// One GET; a non-200 answer is an error that names the URL and the status.
pub fn get(url: &str, timeout: Duration) -> Result<String, String> {
    let (ep, path) = parse_http_url(url)?;
    let r = call(&ep, "GET", &path, None, timeout).map_err(|e| format!("{url}: {e}"))?;
    if r.code != 200 {
        return Err(format!("{url}: HTTP {}", r.code));
    }
    if r.chunked {
        return Err(format!("{url}: chunked transfer encoding is not supported; serve the file with a length"));
    }
    Ok(r.body)
}

/// GETs `url` until it answers 200 or `limit` is over, waiting `pause` between tries (with a
/// note of each failure via `on_retry`). Returns the body, or the last error and the tries made.
pub fn get_with_retries(
    url: &str,
    limit: Duration,
    pause: Duration,
    mut on_retry: impl FnMut(u32, &str),
) -> Result<String, (String, u32)> {
    let end = Instant::now() + limit;
    let mut tries = 0;
    loop {
        tries += 1;
        let left = end.saturating_duration_since(Instant::now());
        match get(url, left.clamp(Duration::from_millis(200), Duration::from_secs(5))) {
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
        assert!(parse_http_url("https://x/y").unwrap_err().contains("only http://"));
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

    #[test]
    fn a_server_that_comes_up_late_is_waited_for() {
        let url = flaky_server(2, "[cluster]\nname = \"x\"\n");
        let mut retries = vec![];
        let body = get_with_retries(&url, Duration::from_secs(10), Duration::from_millis(10), |n, e| {
            retries.push((n, e.to_string()))
        })
        .unwrap();
        assert_eq!(body, "[cluster]\nname = \"x\"\n");
        assert_eq!(retries.len(), 2);
        assert!(retries[0].1.ends_with("HTTP 503"), "{retries:?}");
    }

    #[test]
    fn an_unreachable_url_gives_up_at_the_deadline_with_the_last_error() {
        // A port nothing listens on: bind one, then close it.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/c.toml");
        let (err, tries) =
            get_with_retries(&url, Duration::from_millis(300), Duration::from_millis(50), |_, _| {}).unwrap_err();
        assert!(err.starts_with(&url) && err.contains("refused"), "{err}");
        assert!(tries >= 2, "{tries}");
    }
}
