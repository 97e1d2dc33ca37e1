//! What QEMU's migration TLS costs: the same guest (256 MiB of RAM in use) migrated between two
//! QEMUs on this host over loopback, in plain TCP and over TLS (`tls-creds-x509` with
//! `verify-peer` on at both ends and `tls-authz` on the destination, the lab CA's blade
//! certificates, exactly as blades set it up), alternating, in the same run. Prints QEMU's total
//! time, downtime and throughput for each. (The blades' own migrations always use TLS; the
//! two-blade figures are bench-migrate's.)
//!
//! Usage: bench-migrate-tls [rounds] [memory-mib]   (default 3 rounds of each, 256 MiB)

use bladevisor_lab::pair::{creds, migrate, random_ram, Ends, Figures};
use bladevisor_lab::{lab_pki, repo_root, test_guest};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let mib: u32 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let dir = repo_root().join("target/lab/bench-migrate-tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work folder");
    let (disk, ram) = (test_guest(&dir), random_ram(&dir, mib));
    let ends = Ends {
        src_dir: creds(&dir, "src-tls", &lab_pki().ca, "blade1"),
        dst_dir: creds(&dir, "dst-tls", &lab_pki().ca, "blade2"),
        src_expects: "blade2".into(),
        dst_expects: "blade1".into(),
    };
    let (mut plain, mut tls) = (vec![], vec![]);
    for _ in 0..rounds {
        plain.push(migrate(&dir, &disk, &ram, mib, None).expect("plain migration"));
        tls.push(migrate(&dir, &disk, &ram, mib, Some(&ends)).expect("TLS migration"));
    }
    let show = |name: &str, v: &[Figures]| {
        println!(
            "  {name:<28} total {:>6.0} ms   downtime {:>4.0} ms   {:>7.0} Mbit/s",
            median(v.iter().map(|x| x.total_ms).collect()),
            median(v.iter().map(|x| x.downtime_ms).collect()),
            median(v.iter().map(|x| x.mbps).collect())
        );
    };
    println!(
        "QEMU live migration of a {mib} MiB guest (RAM in use) over loopback on this host (TCG), median of {rounds}:"
    );
    show("plain TCP (the baseline)", &plain);
    show("TLS, verify-peer + authz", &tls);
}
