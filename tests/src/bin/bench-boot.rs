//! Boot benchmark: prints the image's size, the blade's memory in use at ready, and the time
//! from QEMU start to `bladevisor ready`, beside the floor for this kernel on this machine
//! (the same kernel booting a trivial initrd that powers off at once), measured in the same run;
//! then where PID 1's boot spent its time, phase by phase.
//!
//! Usage: bench-boot [runs]   (default 3 runs of each)

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bladevisor_lab::{lab_san, work_dir, Blade, BladeSpec, Boot, Image};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Bytes of the initrd once decompressed (what the blade keeps in RAM as its root filesystem).
fn unpacked_size(initrd: &Path) -> u64 {
    let mut child = Command::new("zstd").args(["-dc"]).arg(initrd).stdout(Stdio::piped()).spawn().expect("zstd");
    let mut out = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let _ = child.wait();
    total
}

/// The same kernel with a busybox initrd whose /init powers off at once: the floor.
fn floor_initrd(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("floor-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static (image/host-deps installs it)");
    std::fs::write(root.join("init"), "#!/bin/busybox sh\n/bin/busybox poweroff -f\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("floor.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . | cpio -o -H newc --quiet > {}", root.display(), out.display()))
        .status()
        .unwrap();
    assert!(st.success(), "cpio failed");
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let img = Image::built();
    let dir = work_dir("bench-boot");
    let floor = floor_initrd(&dir);

    let mut floor_s = vec![];
    for i in 0..runs {
        let floor_img = Image { initrd: floor.clone(), ..img.clone() };
        let spec =
            BladeSpec::new(&format!("bench-floor-{i}"), "52:54:00:b1:ad:01", Boot::Direct { cmdline: String::new() });
        let mut b = Blade::start(spec, &floor_img);
        b.wait_exit(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
        floor_s.push(b.started.elapsed().as_secs_f64());
    }

    let mut ready_s = vec![];
    let mut ready_kernel_ms = vec![];
    let mut used = vec![];
    let mut phases: Vec<(String, Vec<f64>)> = vec![];
    for i in 0..runs {
        let mut spec = BladeSpec::new(
            &format!("bench-boot-{i}"),
            "52:54:00:b1:ad:01",
            Boot::Direct { cmdline: "bladevisor.node=blade1".into() },
        );
        let bdir = work_dir(&format!("bench-boot-{i}"));
        spec.luns = lab_san(&bdir, 16);
        let t0 = Instant::now();
        let mut b = Blade::start_in(spec, &img, bdir);
        let (line, _) = b.wait_console("bladevisor ready", Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
        ready_s.push(t0.elapsed().as_secs_f64());
        if let Some(ms) = line
            .split(" ms since kernel start")
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|m| m.parse::<f64>().ok())
        {
            ready_kernel_ms.push(ms);
        }
        let st = b.status().unwrap_or_else(|e| panic!("{e}"));
        used.push(st.memory.used_mib as f64);
        for p in st.boot_phases {
            match phases.iter_mut().find(|(n, _)| *n == p.name) {
                Some((_, v)) => v.push(p.ms as f64),
                None => phases.push((p.name, vec![p.ms as f64])),
            }
        }
    }

    let compressed = std::fs::metadata(&img.initrd).map(|m| m.len()).unwrap_or(0);
    let kernel = std::fs::metadata(&img.kernel).map(|m| m.len()).unwrap_or(0);
    println!("bladevisor {} boot benchmark (QEMU TCG, -m 2048 -smp 2, {runs} runs each, medians)", img.version());
    println!("  initrd, compressed (zstd):   {:7.1} MiB   (kernel {:.1} MiB)", mib(compressed), mib(kernel));
    println!("  initrd, unpacked in RAM:     {:7.1} MiB", mib(unpacked_size(&img.initrd)));
    println!(
        "  memory in use at ready:      {:7.0} MiB   (MemTotal - MemAvailable, root filesystem included)",
        median(used)
    );
    println!(
        "  QEMU start to ready:         {:7.1} s     (kernel start to ready: {:.1} s)",
        median(ready_s),
        median(ready_kernel_ms) / 1000.0
    );
    println!("  floor, same kernel + 1 MiB busybox initrd, start to power-off: {:.1} s", median(floor_s));
    let phases: Vec<String> = phases.into_iter().map(|(n, v)| format!("{n} {:.1} s", median(v) / 1000.0)).collect();
    println!("  boot phases (PID 1's, in order, medians): {}", phases.join(", "));
}
