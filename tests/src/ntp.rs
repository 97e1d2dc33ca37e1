//! An NTP server for the lab (what a site's time server is to blades): answers each SNTP
//! request with the host's clock `skew` seconds ahead, so a test sees the blade step its clock.

use std::net::UdpSocket;
use std::time::{SystemTime, UNIX_EPOCH};

fn ntp(unix: f64) -> [u8; 8] {
    let secs = unix.floor();
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&((secs as u64 + 2_208_988_800) as u32).to_be_bytes());
    b[4..].copy_from_slice(&(((unix - secs) * 4_294_967_296.0) as u32).to_be_bytes());
    b
}

/// Serves on a free UDP port of the host's loopback (blades reach it as 10.0.2.2:<port>);
/// returns the port. Runs as long as the test process.
pub fn serve(skew: f64) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let port = s.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 48];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if n < 48 {
                continue;
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0) + skew;
            let mut a = [0u8; 48];
            a[0] = 0x24; // version 4, server
            a[1] = 2; // stratum
            a[24..32].copy_from_slice(&buf[40..48]);
            a[32..40].copy_from_slice(&ntp(now));
            a[40..48].copy_from_slice(&ntp(now));
            let _ = s.send_to(&a, from);
        }
    });
    port
}
