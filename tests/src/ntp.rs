//! An NTP server for the lab (what a site's time server is to blades): answers each SNTP
//! request with the host's clock `skew` seconds ahead, so a test sees the blade step its clock.

use std::net::UdpSocket;

use bladevisor::net::sntp::to_ntp as ntp;

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
            let now = bladevisor::logging::unix_secs() + skew;
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
