//! The blade's clock, set from the cluster's NTP servers (`[time] ntp-servers`): an SNTP
//! exchange (RFC 4330) with each server in turn until one answers, the clock stepped when it is
//! off by more than [`STEP_BEYOND`]. Certificates are checked against this clock (TLS refuses a
//! certificate "not yet valid" on a blade whose RTC lags), and logs carry it.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Seconds from 1900 (NTP's epoch) to 1970.
const NTP_UNIX: u64 = 2_208_988_800;
/// A clock off by more than this is stepped; less is left (no slewing daemon here).
pub const STEP_BEYOND: Duration = Duration::from_millis(500);

/// A time as NTP writes it: seconds since 1900 and a binary fraction, from Unix seconds.
pub fn to_ntp(unix: f64) -> [u8; 8] {
    let secs = unix.floor();
    let frac = ((unix - secs) * 4_294_967_296.0) as u32;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&((secs as u64 + NTP_UNIX) as u32).to_be_bytes());
    b[4..].copy_from_slice(&frac.to_be_bytes());
    b
}

fn from_ntp(b: &[u8]) -> f64 {
    let secs = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64;
    let frac = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as f64 / 4_294_967_296.0;
    secs - NTP_UNIX as f64 + frac
}

fn now() -> f64 {
    crate::logging::unix_secs()
}

/// A client request sent at `t1` (Unix seconds).
pub fn request(t1: f64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0x23; // LI 0, version 4, mode 3 (client)
    p[40..48].copy_from_slice(&to_ntp(t1));
    p
}

/// The clock's offset (server minus here, seconds) from a server's answer to the request sent
/// at `t1`, received at `t4`; or why the answer is not one to trust.
pub fn offset(answer: &[u8], t1: f64, t4: f64) -> Result<f64, String> {
    if answer.len() < 48 {
        return Err(format!("an answer of {} bytes, not 48", answer.len()));
    }
    if answer[0] & 0x07 != 4 {
        return Err("not a server's answer (mode)".into());
    }
    if answer[1] == 0 {
        return Err(format!("the server refuses (kiss code {:?})", String::from_utf8_lossy(&answer[12..16])));
    }
    if answer[0] >> 6 == 3 {
        return Err("the server's own clock is not synchronised".into());
    }
    if answer[24..32] != to_ntp(t1) {
        return Err("the answer is not to our request (origin timestamp)".into());
    }
    let (t2, t3) = (from_ntp(&answer[32..40]), from_ntp(&answer[40..48]));
    Ok(((t2 - t1) + (t3 - t4)) / 2.0)
}

/// Asks `server` the time; its offset from ours.
pub fn query(server: SocketAddr, timeout: Duration) -> Result<f64, String> {
    let sock = UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    let t1 = now();
    sock.send(&request(t1)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf).map_err(|e| format!("no answer ({e})"))?;
    offset(&buf[..n], t1, now())
}

/// Sets the clock from the first server that answers: what happened, in words for status.
pub fn sync(servers: &[SocketAddr], step: impl Fn(f64) -> Result<(), String>) -> Result<String, String> {
    let mut why = vec![];
    for s in servers {
        match query(*s, Duration::from_secs(2)) {
            Ok(off) if off.abs() > STEP_BEYOND.as_secs_f64() => {
                step(off)?;
                return Ok(format!("synchronised with {s} (stepped by {off:+.3} s)"));
            }
            Ok(off) => return Ok(format!("synchronised with {s} (off by {off:+.3} s)")),
            Err(e) => why.push(format!("{s}: {e}")),
        }
    }
    Err(format!("no NTP server answered: {}", why.join("; ")))
}

/// Steps the system clock by `off` seconds (root only).
pub fn step_clock(off: f64) -> Result<(), String> {
    let t = now() + off;
    let ts = rustix::time::Timespec { tv_sec: t.floor() as i64, tv_nsec: ((t - t.floor()) * 1e9) as i64 };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, ts).map_err(|e| format!("cannot set the clock: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers with its clock `skew` seconds ahead of ours.
    fn server(skew: f64, stratum: u8) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 48];
            while let Ok((_, from)) = s.recv_from(&mut buf) {
                let mut a = [0u8; 48];
                a[0] = 0x24; // version 4, mode 4
                a[1] = stratum;
                a[24..32].copy_from_slice(&buf[40..48]);
                let t = now() + skew;
                a[32..40].copy_from_slice(&to_ntp(t));
                a[40..48].copy_from_slice(&to_ntp(t));
                let _ = s.send_to(&a, from);
            }
        });
        addr
    }

    #[test]
    fn timestamps_survive_ntps_format() {
        let t = 1_795_000_000.25;
        assert!((from_ntp(&to_ntp(t)) - t).abs() < 1e-6);
    }

    #[test]
    fn the_offset_is_measured_and_a_clock_far_off_is_stepped() {
        let off = query(server(3600.0, 2), Duration::from_secs(2)).unwrap();
        assert!((off - 3600.0).abs() < 0.5, "{off}");
        let stepped = std::sync::Mutex::new(None);
        let said = sync(&[server(3600.0, 2)], |o| {
            *stepped.lock().unwrap() = Some(o);
            Ok(())
        })
        .unwrap();
        assert!(said.contains("stepped by +3600"), "{said}");
        assert!(stepped.lock().unwrap().is_some_and(|o| (o - 3600.0).abs() < 0.5));
        let said = sync(&[server(0.0, 2)], |_| panic!("no step for a clock that is right")).unwrap();
        assert!(said.contains("off by"), "{said}");
    }

    #[test]
    fn a_refusing_or_silent_server_is_passed_over() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = sync(&[silent.local_addr().unwrap(), server(5.0, 0)], |_| Ok(())).unwrap_err();
        assert!(e.contains("no answer") && e.contains("the server refuses"), "{e}");
        let said = sync(&[silent.local_addr().unwrap(), server(5.0, 3)], |_| Ok(())).unwrap();
        assert!(said.contains("stepped by +5"), "{said}");
        assert!(offset(&[0u8; 10], 0.0, 0.0).unwrap_err().contains("10 bytes"));
    }
}
