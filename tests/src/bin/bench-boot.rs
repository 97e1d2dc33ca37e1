//! Boot benchmark: prints the boot artifacts' size, the blade's memory in use at ready, and the
//! time from QEMU start to `bladevisor ready`, each beside its goal and its floor for this kernel
//! on this machine (the same kernel booting a trivial initrd that reads its memory and powers
//! off at once), measured in the same run; then where PID 1's boot spent its time, phase by
//! phase, and what the root image holds by package, largest first (from the manifest).
//!
//! Usage: bench-boot [runs]   (default 3 runs of each)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bladevisor_lab::{lab_san, work_dir, Blade, BladeSpec, Boot, Image};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The same kernel with a busybox initrd whose /init prints the memory in use and powers off at
/// once: the floor.
fn floor_initrd(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("floor-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static (image/host-deps installs it)");
    let init = "#!/bin/busybox sh\n/bin/busybox mkdir -p /proc\n/bin/busybox mount -t proc proc /proc\n\
                /bin/busybox awk 'FILENAME == \"/proc/meminfo\" {printf \"floor-mi %s %d\\n\", $1, $2/1024} \
                /^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} /count:/ {p+=$2*4} \
                END {printf \"floor-mi FreeInPerCpuLists: %d\\nfloor-used-kib %d\\n\", p/1024, t-a-p}' \
                /proc/meminfo /proc/zoneinfo\n/bin/busybox poweroff -f\n";
    std::fs::write(root.join("init"), init).unwrap();
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

/// One boot of the floor: seconds from QEMU start to power-off, memory in use (MiB) and the
/// `/proc/meminfo` fields it printed.
fn floor_once(
    img: &Image,
    floor: &Path,
    name: &str,
    cmdline: &str,
) -> (f64, Option<f64>, std::collections::BTreeMap<String, String>) {
    let floor_img = Image { initrd: floor.to_path_buf(), ..img.clone() };
    let spec = BladeSpec::new(name, "52:54:00:b1:ad:01", Boot::Direct { cmdline: cmdline.into() });
    let mut b = Blade::start(spec, &floor_img);
    b.wait_exit(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let s = b.started.elapsed().as_secs_f64();
    let console = b.console();
    let detail = console
        .lines()
        .filter_map(|l| {
            let mut w = l.split("floor-mi ").nth(1)?.split_whitespace();
            Some((w.next()?.trim_end_matches(':').to_string(), w.next()?.to_string()))
        })
        .collect();
    let used = console
        .split("floor-used-kib ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib as f64 / 1024.0);
    (s, used, detail)
}

/// The lab blade has two CPUs; real blades have tens to hundreds, and the kernel sizes some of
/// its memory by the CPUs that may ever be present (per-CPU areas; squashfs keeps one
/// decompressor, with its window, per possible CPU). One more boot of each with this many
/// possible CPUs (`possible_cpus=`, two still present) shows what each costs.
const MANY_CPUS: u32 = 64;

/// Each SCSI host's boot scan, as the console logged it: `host2 140 ms`.
fn scans(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|l| l.contains(" scanned ") && l.contains("hba="))
        .filter_map(|l| {
            let host = l.split("hba=").nth(1)?.split_whitespace().next()?;
            let ms = l.split(" ms=").nth(1)?.split_whitespace().next()?;
            Some(format!("{host} {ms} ms"))
        })
        .collect()
}

/// One boot of the lab blade: seconds from QEMU start to ready, its status and console.
fn boot_once(
    img: &Image,
    name: &str,
    extra_cmdline: &str,
    place: impl Fn(&mut Vec<bladevisor_lab::Lun>),
) -> (f64, String, bladevisor::proto::Status, String) {
    let cmdline = format!("bladevisor.node=blade1 {extra_cmdline}").trim().to_string();
    let mut spec = BladeSpec::new(name, "52:54:00:b1:ad:01", Boot::Direct { cmdline });
    let bdir = work_dir(name);
    spec.luns = lab_san(&bdir, 16);
    place(&mut spec.luns);
    let t0 = Instant::now();
    let mut b = Blade::start_in(spec, img, bdir);
    let (line, _) = b.wait_console("bladevisor ready", Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    let s = t0.elapsed().as_secs_f64();
    let st = b.status().unwrap_or_else(|e| panic!("{e}"));
    (s, line, st, b.console())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let img = Image::built();
    let dir = work_dir("bench-boot");
    let floor_cpio = floor_initrd(&dir);

    let mut floor_s = vec![];
    let mut floor_used = vec![];
    let mut floor_used_kernel = vec![];
    let mut floor_detail: std::collections::BTreeMap<String, String> = Default::default();
    for i in 0..runs {
        let (s, used, detail) = floor_once(&img, &floor_cpio, &format!("bench-floor-{i}"), "");
        floor_s.push(s);
        floor_used.extend(used);
        let field = |k: &str| detail.get(k).and_then(|v: &String| v.parse::<f64>().ok());
        floor_used_kernel.extend(field("MemTotal").zip(field("MemAvailable")).map(|(t, a)| t - a));
        floor_detail = detail;
    }

    let mut ready_s = vec![];
    let mut ready_kernel_ms = vec![];
    let mut used = vec![];
    let mut used_kernel = vec![];
    let mut phases: Vec<(String, Vec<f64>)> = vec![];
    let mut by_process: Vec<(String, f64, Option<f64>)> = vec![];
    let mut cpu_by_process: Vec<(String, f64)> = vec![];
    let mut cpu: Vec<bladevisor::proto::CpuTime> = vec![];
    let mut detail = std::collections::BTreeMap::new();
    let mut scanned = vec![];
    for i in 0..runs {
        let (s, line, st, console) = boot_once(&img, &format!("bench-boot-{i}"), "", |_| {});
        ready_s.push(s);
        scanned = scans(&console);
        if let Some(ms) = line
            .split(" ms since kernel start")
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|m| m.parse::<f64>().ok())
        {
            ready_kernel_ms.push(ms);
        }
        used.push(st.memory.used_mib as f64);
        used_kernel.extend(st.memory.detail.get("MemAvailable").map(|a| st.memory.total_mib as f64 - *a as f64));
        // Where the memory goes, from the last run: each service's and guest's cgroup.
        by_process = st
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), mib(s.memory_bytes?), s.memory_file_bytes.map(mib))))
            .collect();
        by_process.sort_by(|a, b| b.1.total_cmp(&a.1));
        cpu_by_process = st.services.iter().filter_map(|s| Some((s.name.clone(), s.cpu_seconds?))).collect();
        cpu_by_process.sort_by(|a, b| b.1.total_cmp(&a.1));
        cpu.extend(st.cpu_time.clone());
        detail = st.memory.detail.clone();
        for p in st.boot_phases {
            match phases.iter_mut().find(|(n, _)| *n == p.name) {
                Some((_, v)) => v.push(p.ms as f64),
                None => phases.push((p.name, vec![p.ms as f64])),
            }
        }
    }

    let initrd = std::fs::metadata(&img.initrd).map(|m| m.len()).unwrap_or(0);
    let kernel = std::fs::metadata(&img.kernel).map(|m| m.len()).unwrap_or(0);
    let manifest: serde_json::Value = std::fs::read_to_string(img.initrd.with_extension("manifest"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let root = &manifest["root"];
    let (ready, floor) = (median(ready_s), median(floor_s.clone()));
    println!("bladevisor {} boot benchmark (QEMU TCG, -m 2048 -smp 2, {runs} runs each, medians)", img.version());
    println!(
        "  boot artifacts, kernel + initrd:  {:6.1} MiB   goal <= 48     (floor, the kernel alone: {:.1} MiB)",
        mib(kernel + initrd),
        mib(kernel)
    );
    println!(
        "  root image, kept in RAM:          {:6.1} MiB   ({}, {:.1} MiB of files, {} files)",
        mib(root["compressed_bytes"].as_u64().unwrap_or(0)),
        root["format"].as_str().unwrap_or("?"),
        mib(root["unpacked_bytes"].as_u64().unwrap_or(0)),
        root["files"].as_u64().unwrap_or(0)
    );
    println!(
        "  memory in use at ready:           {:6.0} MiB   goal <= 160    (floor, the kernel alone: {:.0} MiB; MemTotal - \
         MemAvailable - free pages on the kernel's per-CPU lists; by MemAvailable alone {:.0} MiB, floor {:.0} MiB)",
        median(used.clone()),
        median(floor_used.clone()),
        median(used_kernel),
        median(floor_used_kernel),
    );
    println!(
        "  QEMU start to ready:              {:6.1} s     = {:.2} x floor, goal <= 1.6 x   (floor, same kernel + 1 MiB busybox initrd, start to power-off: {:.1} s; kernel start to ready {:.1} s)",
        ready,
        ready / floor,
        floor,
        median(ready_kernel_ms) / 1000.0
    );
    let phases: Vec<String> = phases.into_iter().map(|(n, v)| format!("{n} {:.1} s", median(v) / 1000.0)).collect();
    println!("  boot phases (PID 1's, in order, medians): {}", phases.join(", "));
    let shown: Vec<String> = by_process
        .iter()
        .map(|(n, m, f)| f.map(|f| format!("{n} {m:.1} ({f:.1})")).unwrap_or_else(|| format!("{n} {m:.1}")))
        .collect();
    println!(
        "  memory by service at ready (MiB, cgroup memory.current, in brackets its page cache, last run): {}",
        shown.join(", ")
    );
    // Where the CPUs went from kernel start to ready: whether the boot waits on work (busy) or
    // on something else (idle).
    if !cpu.is_empty() {
        let m = |f: fn(&bladevisor::proto::CpuTime) -> f64| median(cpu.iter().map(f).collect());
        let shown: Vec<String> = cpu_by_process.iter().map(|(n, c)| format!("{n} {c:.1}")).collect();
        println!(
            "  CPU time from kernel start to ready (s, summed over CPUs, medians): busy {:.1}, idle {:.1}; of the busy, \
             bladevisor {:.1}; running services' cgroups (last run): {}",
            m(|c| c.busy_s),
            m(|c| c.idle_s),
            m(|c| c.init_s),
            shown.join(", ")
        );
    }
    let both: Vec<String> = detail
        .iter()
        .map(|(k, v)| format!("{k} {v} ({})", floor_detail.get(k).map(String::as_str).unwrap_or("?")))
        .collect();
    println!("  /proc/meminfo at ready, MiB (in brackets the floor's), last run: {}", both.join(", "));
    // Where the memory above the floor goes (last run), so the next diet starts from data.
    let at = |k: &str| detail.get(k).copied().unwrap_or(0) as i64;
    let at_floor = |k: &str| floor_detail.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let above = |k: &str| at(k) - at_floor(k);
    let used_above = (at("MemTotal") - at("MemAvailable")) - (at_floor("MemTotal") - at_floor("MemAvailable"));
    let kernel = above("SUnreclaim") + above("VmallocUsed") + above("KernelStack") + above("PageTables");
    let file = at("Active(file)") + at("Inactive(file)");
    if detail.contains_key("MemAvailable") {
        let pcp = above("FreeInPerCpuLists");
        let in_use = used_above - pcp;
        let rest = in_use - above("Shmem") - above("AnonPages") - kernel;
        println!(
            "  memory in use above the floor, last run: {in_use} MiB = root image (Shmem) {} + processes' \
             anonymous {} + kernel (slab, vmalloc, stacks, page tables) {kernel} + the rest {rest}: the share of \
             the {file} MiB page cache that MemAvailable does not count as available (up to half of it, as much as \
             the low watermark), reclaimable slab, other kernel pages; MemAvailable alone counts {pcp} MiB more \
             (free pages on the kernel's per-CPU lists)",
            above("Shmem"),
            above("AnonPages"),
        );
    }
    // The layout real arrays have: LUNs behind targets other than 0 (the lab's sit at target 0).
    let (s, _, st, console) = boot_once(&img, "bench-boot-targets", "", |luns| {
        for (i, l) in luns.iter_mut().enumerate() {
            l.scsi_id = Some(i as u32 + 1);
        }
    });
    let storage = st.boot_phases.iter().find(|p| p.name == "storage").map(|p| p.ms as f64 / 1000.0);
    println!("  SCSI scans at boot, LUNs at target 0 (last run): {}", scanned.join(", "));
    println!(
        "  the same SAN with its LUNs at SCSI targets 1 and 2: ready {s:.1} s, storage phase {:.1} s, scans: {}",
        storage.unwrap_or(f64::NAN),
        scans(&console).join(", ")
    );
    let many = format!("possible_cpus={MANY_CPUS}");
    let (_, floor_many, _) = floor_once(&img, &floor_cpio, "bench-floor-many", &many);
    let (_, _, st_many, _) = boot_once(&img, "bench-boot-many", &many, |_| {});
    let (floor_many, used_many) = (floor_many.unwrap_or(f64::NAN), st_many.memory.used_mib as f64);
    let per_cpu = ((used_many - floor_many) - (median(used) - median(floor_used))) / f64::from(MANY_CPUS - 2);
    let d = |k: &str| st_many.memory.detail.get(k).copied().unwrap_or(0);
    println!(
        "  with {MANY_CPUS} possible CPUs (two present): memory in use at ready {used_many:.0} MiB (floor {floor_many:.0} \
         MiB): above the floor, {per_cpu:.2} MiB more per possible CPU than with two (slab {} MiB, vmalloc {} MiB, \
         per-CPU areas {} MiB)",
        d("SUnreclaim"),
        d("VmallocUsed"),
        d("Percpu")
    );
    println!("  the root by package, largest first (unpacked, from the manifest):");
    for row in root["by_package"].as_array().map(|v| &v[..v.len().min(20)]).unwrap_or(&[]) {
        println!(
            "    {:>7.2} MiB {:>5} files  {}",
            mib(row["bytes"].as_u64().unwrap_or(0)),
            row["files"].as_u64().unwrap_or(0),
            row["package"].as_str().unwrap_or("?")
        );
    }
}
