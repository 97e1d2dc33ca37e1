//! `cargo bench -p bladevisor --bench init`: what the init costs and how fast it restarts.
//!
//! Prints, for the release build of the init running as PID 1 of a namespace with a few idle
//! services: its resident memory beside that of the smallest process in the same namespace
//! (`sleep`, the floor for any process here), and the time from a service's crash to its
//! restart beside the configured first backoff delay (the floor the policy sets).

#[path = "../tests/support/ns.rs"]
mod ns;

use std::time::{Duration, Instant};

use ns::Ns;

const FIRST_BACKOFF_MS: u64 = 200;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Host pid of a namespace pid: the matching NSpid line in /proc.
fn host_pid(ns_pid: u32, init_host: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|p| {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let nspid = st.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or("");
        let ids: Vec<&str> = nspid.split_whitespace().collect();
        ids.len() == 2 && ids[1] == ns_pid.to_string() && *p != init_host
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for a list; there is nothing to list.
    }
    let services = format!(
        r#"
[services.idle1]
argv = ["/bin/sleep", "100000"]
[services.idle2]
argv = ["/bin/sleep", "100000"]
[services.idle3]
argv = ["/bin/sleep", "100000"]
[services.victim]
argv = ["/bin/sleep", "100000"]
backoff = {{ initial-s = {}, reset-after-s = 0.5, give-up-after = 0 }}
"#,
        FIRST_BACKOFF_MS as f64 / 1000.0
    );
    let ns = Ns::start("bench", &services);
    ns.wait_for("ready", Duration::from_secs(20), |ns| ns.status().ready);
    std::thread::sleep(Duration::from_secs(2)); // idle: let start-up allocations settle
    let init = ns.init_pid();
    let init_rss = rss_kib(init);
    let sleep_pid = ns.service("idle1").pid.and_then(|p| host_pid(p, init)).expect("idle1 runs");
    let sleep_rss = rss_kib(sleep_pid);
    println!(
        "init resident memory, idle with 4 services: {init_rss} KiB (baseline: one `sleep` process: {sleep_rss} KiB)"
    );

    let mut samples = vec![];
    for _ in 0..7 {
        let before = ns.service("victim");
        let pid = before.pid.and_then(|p| host_pid(p, init)).expect("victim runs");
        let t0 = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        loop {
            let s = ns.service("victim");
            if s.restarts > before.restarts && s.pid.is_some() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "victim did not restart; console:\n{}", ns.log());
            std::thread::sleep(Duration::from_millis(2));
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(800)); // past reset-after-s: next crash is a first one again
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let median = samples[samples.len() / 2];
    println!(
        "crash to restart at the first backoff step: median {median:.0} ms over {} crashes, min {:.0}, max {:.0} (baseline: configured first backoff {FIRST_BACKOFF_MS} ms; overhead {:.0} ms)",
        samples.len(),
        samples[0],
        samples[samples.len() - 1],
        median - FIRST_BACKOFF_MS as f64
    );
}
