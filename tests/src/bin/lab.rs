//! The README's main job: boots the built image as the two blades of the QEMU lab (one SAN, a
//! peer link between them, the cluster configuration `tests/two-blades.toml` served over HTTP)
//! and tells the operator how to reach them. Runs until interrupted (ctrl-c powers both blades
//! off in order).
//!
//! Usage: lab [--until-ready]   (--until-ready: power off again once both are ready)

use std::io::Write;
use std::time::Duration;

use bladevisor_lab::{free_port, Image, TwoBlades};

fn main() {
    let until_ready = std::env::args().any(|a| a == "--until-ready");
    let img = Image::built();
    // 7480/7443 and 7481/7444 on the host, like on a blade, unless something already uses them.
    let port = |p: u16| if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() { p } else { free_port() };
    let ports = [port(7480), port(7481)];
    let tls = [port(7443), port(7444)];
    let mut lab = TwoBlades::start("lab", &img, 64, [Some((ports[0], tls[0])), Some((ports[1], tls[1]))]);
    // The lab's CA, made at start as `bladevisor credentials init` makes one: where the CLI finds it.
    let ca = bladevisor_lab::repo_root().join("target/lab/ca.pem");
    std::fs::copy(&bladevisor_lab::lab_pki().ca_file, &ca).expect("the lab CA");
    println!("lab: booting {} (version {}) under QEMU/TCG as blade1 and blade2", img.initrd.display(), img.version());
    println!("lab: the cluster configuration they fetch: tests/two-blades.toml (served at 10.0.2.2:{})", lab.http.port);
    for b in &lab.blades {
        println!("lab: {} serial console: {}", b.spec.name, b.console.display());
    }

    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone()).expect("signal handler");
    }

    // Follow blade1's console on stdout (blade2's is in its file) until both are ready.
    let mut shown = 0;
    let mut ready = [false, false];
    let mut told = false;
    loop {
        let text = lab.blades[0].console();
        if text.len() > shown && !told {
            print!("{}", &text[shown..]);
            let _ = std::io::stdout().flush();
            shown = text.len();
        }
        for (i, b) in lab.blades.iter().enumerate() {
            if !ready[i] && b.console().contains("bladevisor ready") {
                ready[i] = true;
                println!("\nlab: blade{} is ready", i + 1);
            }
        }
        if ready == [true, true] && !told {
            told = true;
            let cli = "target/release/bladevisor";
            let at = |n: usize| format!("--api https://127.0.0.1:{} --server-name blade{}", tls[n], n + 1);
            println!(
                "\nlab: both blades are ready. Their APIs are forwarded to 127.0.0.1: plain HTTP (status and \
                 metrics only) on {} and {}, TLS (every call) on {} and {}. The lab made its own CA and \
                 credentials at start; for the CLI:",
                ports[0], ports[1], tls[0], tls[1]
            );
            println!("lab:   export BLADEVISOR_CA={} BLADEVISOR_TOKEN={}", ca.display(), bladevisor_lab::LAB_TOKEN);
            println!("lab:   {cli} {} status", at(0));
            println!("lab:   curl -s http://127.0.0.1:{}/metrics", ports[1]);
            println!("lab: the demo guest runs on blade1 (it starts once lab-vm1 is up; TCG inside TCG):");
            println!("lab:   {cli} {} console demo --follow", at(0));
            println!("lab: move it to blade2 while it runs (over QEMU's TLS), then evacuate blade2 (it comes home) and undrain:");
            println!("lab:   {cli} {} migrate demo --to blade2", at(0));
            println!("lab:   {cli} {} evacuate", at(1));
            println!("lab:   {cli} {} undrain", at(1));
            println!("lab: ctrl-c powers both blades off in order.");
            if until_ready {
                interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if lab.blades.iter_mut().all(|b| !b.is_running()) {
            println!("lab: both QEMUs exited");
            std::process::exit(if told { 0 } else { 1 });
        }
        if interrupted.swap(false, std::sync::atomic::Ordering::SeqCst) {
            println!("\nlab: sending ACPI power-off to both blades");
            for b in &lab.blades {
                if let Ok(mut q) = b.qmp() {
                    let _ = q.execute("system_powerdown", serde_json::json!({}));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
