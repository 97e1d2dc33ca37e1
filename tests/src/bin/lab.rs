//! The README's main job: boots the built image as blade1 of the QEMU lab and tells the
//! operator how to reach it. Runs until interrupted (ctrl-c powers the blade off in order).
//!
//! Usage: lab [--until-ready]   (--until-ready: power off again once ready; for a quick check)

use std::io::Write;
use std::time::Duration;

use bladevisor_lab::{free_port, lab_san, work_dir, Blade, BladeSpec, Boot, Image};

fn main() {
    let until_ready = std::env::args().any(|a| a == "--until-ready");
    let img = Image::built();
    // 7480 on the host, like on a blade, unless something already uses it.
    let port = if std::net::TcpListener::bind("127.0.0.1:7480").is_ok() { 7480 } else { free_port() };
    let mut spec =
        BladeSpec::new("lab-blade1", "52:54:00:b1:ad:01", Boot::Direct { cmdline: "bladevisor.node=blade1".into() });
    spec.host_api_port = Some(port);
    // The lab SAN: two LUNs, each through two HBAs, named by the baked alias table.
    let dir = work_dir("lab-blade1");
    spec.luns = lab_san(&dir, 64);
    let mut blade = Blade::start_in(spec, &img, dir);
    println!("lab: booting {} (version {}) under QEMU/TCG as blade1", img.initrd.display(), img.version());
    println!("lab: serial console: {}", blade.console.display());

    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone()).expect("signal handler");
    }

    // Follow the console on stdout until ready (and after, until interrupted).
    let mut shown = 0;
    let mut ready = false;
    loop {
        let text = blade.console();
        if text.len() > shown {
            print!("{}", &text[shown..]);
            let _ = std::io::stdout().flush();
            shown = text.len();
        }
        if !ready && text.contains("bladevisor ready") {
            ready = true;
            println!("\nlab: blade1 is ready. Its API is forwarded to 127.0.0.1:{port}:");
            println!("lab:   target/release/bladevisor --api 127.0.0.1:{port} status");
            println!("lab:   curl -s http://127.0.0.1:{port}/v1/status ; curl -s http://127.0.0.1:{port}/metrics");
            println!("lab:   the lab's token (overlay/etc/bladevisor/cluster.toml) is needed for mutating calls:");
            println!("lab:   target/release/bladevisor --api 127.0.0.1:{port} --token lab-token-change-me reboot");
            println!(
                "lab: the demo guest's console (it starts once lab-vm1 is up; TCG inside TCG takes a minute or two):"
            );
            println!("lab:   target/release/bladevisor --api 127.0.0.1:{port} --token lab-token-change-me console demo --follow");
            println!("lab: ctrl-c powers the blade off in order.");
            if until_ready {
                interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if !blade.is_running() {
            println!("lab: QEMU exited");
            std::process::exit(if ready { 0 } else { 1 });
        }
        if interrupted.swap(false, std::sync::atomic::Ordering::SeqCst) {
            println!("\nlab: sending ACPI power-off to blade1");
            if let Ok(mut q) = blade.qmp() {
                let _ = q.execute("system_powerdown", serde_json::json!({}));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
