//! Two QEMUs on this host and a live migration between them, with or without the blades' QEMU
//! TLS (`bladevisor::migration::tls`, exactly as blades set it up): what the migration TLS
//! benchmark measures and what the migration TLS test breaks on purpose.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bladevisor::migration::tls::{self, StreamTls};
use bladevisor::tls::Pem;
use serde_json::json;

use crate::qmp::Qmp;
use crate::{free_port, pki};

pub struct Vm {
    child: Child,
    pub qmp: Qmp,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, name: &str, disk: &Path, mib: u32, ram: Option<&Path>, incoming: bool) -> Vm {
    let sock = dir.join(format!("{name}.qmp"));
    let _ = std::fs::remove_file(&sock);
    let mut a: Vec<String> =
        ["-accel", "tcg", "-display", "none", "-serial", "null", "-nodefaults"].iter().map(|s| s.to_string()).collect();
    a.extend(["-m".into(), mib.to_string()]);
    // The source's RAM starts as a private copy of random bytes: a guest whose memory is in use,
    // not zero pages that cost nothing to send. The destination's is plain RAM of the same name.
    let backend = match ram {
        Some(ram) => format!("memory-backend-file,id=ram,size={mib}M,mem-path={},share=off", ram.display()),
        None => format!("memory-backend-ram,id=ram,size={mib}M"),
    };
    a.extend(["-object".into(), backend, "-machine".into(), "memory-backend=ram".into()]);
    a.extend(["-drive".into(), format!("file={},format=raw,if=ide,snapshot=on", disk.display())]);
    a.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())]);
    if incoming {
        a.extend(["-incoming".into(), "defer".into()]);
    }
    let child = Command::new("qemu-system-x86_64")
        .args(&a)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64");
    let qmp = Qmp::connect(&sock).expect("QMP");
    Vm { child, qmp }
}

/// QEMU's figures of a completed migration.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub total_ms: f64,
    pub downtime_ms: f64,
    pub mbps: f64,
}

/// The TLS of both ends: each one's credentials folder, and the blade each expects at the other
/// end (the source checks the destination's name; the destination lets in only that subject).
pub struct Ends {
    pub src_dir: PathBuf,
    pub dst_dir: PathBuf,
    pub src_expects: String,
    pub dst_expects: String,
}

/// One migration of a `mib` MiB guest (its RAM the bytes of `ram`) from a fresh source QEMU to a
/// fresh destination. Err: why it failed, and the source's run state afterwards.
pub fn migrate(dir: &Path, disk: &Path, ram: &Path, mib: u32, tls: Option<&Ends>) -> Result<Figures, (String, String)> {
    let mut src = start(dir, "src", disk, mib, Some(ram), false);
    let mut dst = start(dir, "dst", disk, mib, None, true);
    // Let the guest run a little, as a running guest does.
    std::thread::sleep(Duration::from_millis(500));
    let port = free_port();
    if let Some(t) = tls {
        tls::destination(&mut LabVm(&mut dst.qmp), &StreamTls { dir: t.dst_dir.clone(), peer: t.dst_expects.clone() })
            .expect("destination TLS");
        tls::source(&mut LabVm(&mut src.qmp), &StreamTls { dir: t.src_dir.clone(), peer: t.src_expects.clone() })
            .expect("source TLS");
    }
    let uri = json!({"uri": format!("tcp:127.0.0.1:{port}")});
    dst.qmp.execute("migrate-incoming", uri.clone()).expect("listen");
    src.qmp.execute("migrate-set-parameters", json!({"max-bandwidth": 10_000_000_000u64})).expect("bandwidth");
    src.qmp.execute("migrate", uri).expect("migrate");
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let q = src.qmp.execute("query-migrate", json!({})).expect("query-migrate");
        match q["status"].as_str() {
            Some("completed") => {
                return Ok(Figures {
                    total_ms: q["total-time"].as_f64().unwrap_or(0.0),
                    downtime_ms: q["downtime"].as_f64().unwrap_or(0.0),
                    mbps: q["ram"]["mbps"].as_f64().unwrap_or(0.0),
                })
            }
            Some("failed") => {
                let st = src.qmp.execute("query-status", json!({})).expect("query-status");
                let why = q["error-desc"].as_str().unwrap_or("failed").to_string();
                return Err((why, st["status"].as_str().unwrap_or("?").to_string()));
            }
            _ => {}
        }
        assert!(Instant::now() < end, "migration did not complete: {q}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lab's QMP client as the migration code's `Vm`.
struct LabVm<'a>(&'a mut Qmp);

impl bladevisor::migration::Vm for LabVm<'_> {
    fn execute(&mut self, cmd: &str, args: serde_json::Value) -> Result<serde_json::Value, String> {
        self.0.execute(cmd, args)
    }
}

/// A credentials folder for QEMU in `dir/<name>`: blade `node`'s certificate signed by `ca`
/// (the lab CA, or another one: a rogue blade, which trusts its own CA).
pub fn creds(dir: &Path, name: &str, ca: &bladevisor::tls::pki::Issued, node: &str) -> PathBuf {
    let text = pki::credentials_for(ca, node, "pair-peer-token-0123");
    let c = bladevisor::config::credentials::parse_credentials(node, &text).expect("credentials");
    let out = dir.join(name);
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).expect("work folder"));
    tls::write_dir(&out, uid, &Pem { ca: c.ca, cert: c.cert, key: c.key }).expect("TLS folder");
    out
}

/// `mib` MiB of random bytes, the source guest's RAM.
pub fn random_ram(dir: &Path, mib: u32) -> PathBuf {
    use std::io::{Read, Write};
    let p = dir.join("ram");
    let mut out = std::fs::File::create(&p).expect("RAM file");
    let mut rnd = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rnd.read_exact(&mut buf).expect("random bytes");
        out.write_all(&buf).expect("RAM file");
    }
    p
}
