//! Logs that leave the blade: every event sent to a remote collector as it happens, as RFC 5424
//! syslog or as JSON lines, over UDP (one datagram each) or TCP (RFC 6587 octet counting for
//! syslog, newline-delimited JSON; reconnected when the connection breaks). The sender runs on
//! its own thread behind a bounded queue: a slow or dead collector costs dropped lines, counted,
//! never a blocked PID 1.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ring::Entry;

/// `[logging]` of the cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoggingConfig {
    /// `udp://host:port` or `tcp://host:port` (an address: blades resolve no names before
    /// their configuration is known).
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(default)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Syslog,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where to send: the transport and the collector's address, or why the URL is not one.
pub fn parse_remote(url: &str) -> Result<(Transport, SocketAddr), String> {
    let (t, rest) = match (url.strip_prefix("udp://"), url.strip_prefix("tcp://")) {
        (Some(r), _) => (Transport::Udp, r),
        (_, Some(r)) => (Transport::Tcp, r),
        _ => {
            return Err(format!("{url:?}: a remote log collector is udp://<address>:<port> or tcp://<address>:<port>"))
        }
    };
    let addr = rest
        .trim_end_matches('/')
        .parse::<SocketAddr>()
        .map_err(|_| format!("{url:?}: {rest:?} is not an address and port (e.g. 10.0.0.5:514)"))?;
    Ok((t, addr))
}

/// RFC 5424 severity of a level name.
fn severity(level: &str) -> u8 {
    match level {
        "ERROR" => 3,
        "WARN" => 4,
        "INFO" => 6,
        _ => 7,
    }
}

/// `2026-11-26T21:26:05.123Z` of Unix milliseconds.
fn rfc3339(unix_ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// An SD-PARAM value escaped as RFC 5424 wants (`"`, `\` and `]`).
fn sd_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]")
}

/// A name usable as an SD-PARAM name (printable ASCII without `= ]"` and spaces, 32 at most).
fn sd_name(k: &str) -> String {
    k.chars().filter(|c| c.is_ascii_graphic() && !"=]\"".contains(*c)).take(32).collect()
}

/// One entry as a collector receives it. Facility daemon (3).
pub fn render(e: &Entry, host: &str, format: Format) -> String {
    match format {
        Format::Json => serde_json::json!({
            "time": rfc3339(e.unix_ms),
            "boot_ms": e.boot_ms,
            "host": host,
            "level": e.level,
            "message": e.message,
            "fields": e.fields.iter().cloned().collect::<std::collections::BTreeMap<String, String>>(),
        })
        .to_string(),
        Format::Syslog => {
            let sd = if e.fields.is_empty() {
                "-".to_string()
            } else {
                let params: String =
                    e.fields.iter().map(|(k, v)| format!(" {}=\"{}\"", sd_name(k), sd_escape(v))).collect();
                format!("[fields@32473{params}]")
            };
            let host = if host.is_empty() { "-" } else { host };
            format!("<{}>1 {} {host} bladevisor - - {sd} {}", 3 * 8 + severity(&e.level), rfc3339(e.unix_ms), e.message)
        }
    }
}

/// Lines waiting for the sender; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;

static SENDER: Mutex<Option<SyncSender<Entry>>> = Mutex::new(None);
/// Lines dropped because the collector could not keep up (or was down).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Hands an entry to the sender, if there is one; never blocks.
pub fn offer(e: &Entry) {
    let guard = SENDER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = guard.as_ref() {
        if let Err(TrySendError::Full(_)) = tx.try_send(e.clone()) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts sending to `url`: what the ring holds (the boot so far), then every entry as it
/// comes (replacing an earlier collector).
pub fn start(url: &str, format: Format, host: String) -> Result<(), String> {
    let (transport, addr) = parse_remote(url)?;
    let (tx, rx) = sync_channel(QUEUE);
    {
        let ring = super::ring::RING.lock().unwrap_or_else(|p| p.into_inner());
        for e in ring.all() {
            if tx.try_send(e.clone()).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        *SENDER.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }
    crate::spawn_worker("log-remote", move || send_loop(rx, transport, addr, format, &host));
    Ok(())
}

fn send_loop(rx: Receiver<Entry>, transport: Transport, addr: SocketAddr, format: Format, host: &str) {
    let udp = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).ok();
    let mut tcp: Option<TcpStream> = None;
    while let Ok(e) = rx.recv() {
        let line = render(&e, host, format);
        let sent = match transport {
            Transport::Udp => udp.as_ref().is_some_and(|s| s.send_to(line.as_bytes(), addr).is_ok()),
            Transport::Tcp => {
                if tcp.is_none() {
                    tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok();
                    if let Some(s) = &tcp {
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    }
                }
                let framed = match format {
                    Format::Syslog => format!("{} {line}", line.len()),
                    Format::Json => format!("{line}\n"),
                };
                let ok = tcp.as_mut().is_some_and(|s| s.write_all(framed.as_bytes()).is_ok());
                if !ok {
                    tcp = None;
                }
                ok
            }
        };
        if !sent {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            seq: 7,
            boot_ms: 12_345,
            unix_ms: 1_795_000_000_123,
            level: "WARN".into(),
            message: "guest started".into(),
            fields: vec![("guest".into(), "web".into()), ("why".into(), "a \"quoted\" ] value".into())],
        }
    }

    #[test]
    fn collectors_are_udp_or_tcp_addresses() {
        assert_eq!(parse_remote("udp://10.0.0.5:514"), Ok((Transport::Udp, "10.0.0.5:514".parse().unwrap())));
        assert_eq!(parse_remote("tcp://[fd00::5]:6514/"), Ok((Transport::Tcp, "[fd00::5]:6514".parse().unwrap())));
        assert!(parse_remote("http://x:514").unwrap_err().contains("udp://<address>:<port>"));
        assert!(parse_remote("udp://logs.example:514").unwrap_err().contains("not an address and port"));
    }

    #[test]
    fn an_entry_is_rfc5424_syslog_or_a_json_line() {
        let s = render(&entry(), "blade1", Format::Syslog);
        assert_eq!(
            s,
            "<28>1 2026-11-18T11:06:40.123Z blade1 bladevisor - - [fields@32473 guest=\"web\" why=\"a \\\"quoted\\\" \\] value\"] guest started"
        );
        let j: serde_json::Value = serde_json::from_str(&render(&entry(), "blade1", Format::Json)).unwrap();
        assert_eq!((j["level"].as_str(), j["fields"]["guest"].as_str()), (Some("WARN"), Some("web")));
    }

    #[test]
    fn entries_reach_a_udp_collector() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (tx, rx) = sync_channel(4);
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || send_loop(rx, Transport::Udp, addr, Format::Syslog, "blade1"));
        tx.send(entry()).unwrap();
        let mut buf = [0u8; 2048];
        let n = sock.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with(" guest started"));
    }
}
