//! The QEMU lab: emulated blades booting the built image (`out/`), under TCG, with a serial
//! console captured to a file, QMP, the API port forwarded to the host, optional SAN disks and
//! optional PXE. The integration tests, the benchmarks and `tests/lab` all use it.

pub mod bench;
pub mod demo;
pub mod hostile;
pub mod http;
pub mod live;
pub mod ntp;
pub mod pair;
pub mod pki;
pub mod qmp;

use std::io::Read as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bladevisor::httpc::{call_with_body, Endpoint, Response};
pub use bladevisor::proto::request::{Operator, Peer, Read, Request};
use bladevisor::proto::Status;

/// Unwraps a lab result, failing the test with its message (which carries the console).
pub fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The built image. Fails with the command to run when it is missing.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub ipxe: PathBuf,
    pub dir: PathBuf,
}

impl Image {
    pub fn built() -> Image {
        Self::in_folder(repo_root().join("out"), "run image/build first")
    }

    /// The next release, built from the same tree with another version (what `tests/run`
    /// builds into `out/next` for the upgrade test).
    pub fn next() -> Image {
        Self::in_folder(
            repo_root().join("out/next"),
            "tests/run builds it: image/build --version \"$(git describe --tags --always --dirty)+next\" --out out/next",
        )
    }

    fn in_folder(dir: PathBuf, how: &str) -> Image {
        let img = Image {
            kernel: dir.join("bladevisor.vmlinuz"),
            initrd: dir.join("bladevisor.initrd"),
            ipxe: dir.join("bladevisor.ipxe"),
            dir,
        };
        for f in [&img.kernel, &img.initrd, &img.ipxe] {
            assert!(f.exists(), "{} is missing: {how}", f.display());
        }
        img
    }

    /// The version baked into the image, as image/build wrote it into the manifest.
    pub fn version(&self) -> String {
        let m = std::fs::read_to_string(self.dir.join("bladevisor.manifest")).expect("manifest");
        let v: serde_json::Value = serde_json::from_str(&m).expect("manifest is JSON");
        v["version"].as_str().expect("manifest has a version").to_string()
    }
}

/// A free TCP port on the host's loopback.
pub fn free_port() -> u16 {
    unique_port(|| {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
    })
}

/// A port no other blade of this test process was given: the kernel may hand a freed port out
/// again, and two blades started at once must not both get it.
fn unique_port(mut pick: impl FnMut() -> u16) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let p = pick();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}
/// How the blade boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// `-kernel`/`-initrd` with this extra command line (after `console=ttyS0`).
    Direct { cmdline: String },
    /// `-boot n`: SeaBIOS's iPXE asks slirp's DHCP, which names this boot file (a TFTP path
    /// under `tftp_dir`, or an http:// URL).
    Pxe { tftp_dir: PathBuf, bootfile: String },
}

/// One LUN of the emulated SAN: a file, seen through both HBAs with one WWN.
#[derive(Debug, Clone)]
pub struct Lun {
    pub file: PathBuf,
    /// e.g. 0x5000c50015ea71ac
    pub wwn: String,
    pub serial: String,
    /// The SCSI target it sits at behind each HBA (LUN 0 there); QEMU's next free one if None.
    pub scsi_id: Option<u32>,
}

impl Lun {
    /// The `-blockdev` (or QMP `blockdev-add`) of LUN number `i`: its file.
    pub fn blockdev(&self, i: usize) -> String {
        format!("driver=file,filename={},node-name=lun{i},locking=off,cache.direct=off", self.file.display())
    }

    /// The `-device` (or QMP `device_add`) of its path through `hba`: a `scsi-hd` with the
    /// LUN's WWN (NAA, as arrays give them) or, when `wwn` is empty, only its serial (a
    /// vendor-specific ID, as the seed's `Vendor_...` LUNs have).
    pub fn device(&self, i: usize, hba: usize) -> String {
        let wwn = if self.wwn.is_empty() { String::new() } else { format!(",wwn={}", self.wwn) };
        let at = self.scsi_id.map(|t| format!(",scsi-id={t},lun=0")).unwrap_or_default();
        format!("scsi-hd,id=lun{i}p{hba},bus=hba{hba}.0,drive=lun{i}{wwn}{at},serial={},share-rw=on", self.serial)
    }
}

/// The lab's SAN, as the baked cluster.toml's `[aliases]` names it: (alias, WWN) of each LUN.
pub const LAB_LUNS: [(&str, &str); 2] = [("lab-vm1", "0x5000c50015ea7100"), ("lab-vm2", "0x5000c50015ea7101")];

/// The lease LUN of the HA lab ([`TwoBlades::start_ha`]): alias and WWN.
pub const LEASE_LUN: (&str, &str) = ("lab-leases", "0x5000c50015ea7199");

/// The WWID multipath sees for a WWN (udev's scsi_id: NAA type 3, then the hex).
pub fn wwid_of(wwn: &str) -> String {
    format!("3{}", wwn.trim_start_matches("0x"))
}

/// Where `lab_san` writes each LUN's marker (the first sector holds the test guest's boot code).
pub const MARKER_OFFSET: u64 = 4096;

/// Assembles the test guest (`tests/guest/counter.asm`, a boot sector that prints an
/// increasing counter on its serial port) into `dir`.
pub fn test_guest(dir: &Path) -> PathBuf {
    let out = dir.join("counter.img");
    let src = repo_root().join("tests/guest/counter.asm");
    let st = Command::new("nasm").arg("-f").arg("bin").arg("-o").arg(&out).arg(&src).status();
    assert!(st.is_ok_and(|s| s.success()), "nasm could not assemble {} (image/host-deps installs nasm)", src.display());
    out
}

/// Creates the lab's LUN files under `dir` (sparse, `size_mib` each). Each holds a marker
/// naming its alias at `MARKER_OFFSET`, so a test can tell which LUN a map really is; the first
/// (lab-vm1, the demo guest's disk) starts with the test guest's boot sector.
pub fn lab_san(dir: &Path, size_mib: u64) -> Vec<Lun> {
    use std::io::{Seek, SeekFrom, Write};
    let guest = std::fs::read(test_guest(dir)).expect("assembled test guest");
    LAB_LUNS
        .iter()
        .enumerate()
        .map(|(i, (alias, wwn))| {
            let file = dir.join(format!("{alias}.lun"));
            let mut f = std::fs::File::create(&file).expect("LUN file");
            f.set_len(size_mib << 20).expect("LUN size");
            if i == 0 {
                f.write_all(&guest).expect("boot sector");
            }
            f.seek(SeekFrom::Start(MARKER_OFFSET)).and_then(|_| f.write_all(&lun_marker(alias))).expect("LUN marker");
            Lun { file, wwn: wwn.to_string(), serial: format!("LABLUN{i:04}"), scsi_id: None }
        })
        .collect()
}

/// What `lab_san` writes at `MARKER_OFFSET` of a LUN.
pub fn lun_marker(alias: &str) -> Vec<u8> {
    format!("bladevisor lab LUN {alias}\n").into_bytes()
}

/// The operator token of the lab (the single-blade labs' served configuration holds it as the
/// first release's `[cluster] token`; the two-blade lab's names its SHA-256 as operator `lab`).
pub const LAB_TOKEN: &str = "lab-token-change-me";
pub use pki::{lab_pki, CREDENTIALS, LAB_PEER_TOKEN};

/// Serves the image's baked lab configuration with [`LAB_TOKEN`] added, as a deployment server
/// serves the cluster's configuration, from `dir/www`. Returns the server (keep it while the
/// blade boots) and the kernel argument that fetches it.
pub fn serve_lab_config(dir: &Path) -> (http::HttpDir, String) {
    serve_lab_config_with(dir, "")
}

/// The same with `extra` appended to the configuration (more tables).
pub fn serve_lab_config_with(dir: &Path, extra: &str) -> (http::HttpDir, String) {
    let baked = std::fs::read_to_string(repo_root().join("overlay/etc/bladevisor/cluster.toml")).expect("baked config");
    let served = baked.replacen("[cluster]\n", &format!("[cluster]\ntoken = \"{LAB_TOKEN}\"\n"), 1) + extra;
    assert_ne!(served, baked, "the baked configuration has a [cluster] table");
    let (server, url) = serve_files(dir, &[("cluster.toml", &served)]);
    pki::serve_credentials(&dir.join("www"));
    (server, format!("bladevisor.config={url}/cluster.toml bladevisor.credentials={url}/{CREDENTIALS}"))
}

/// Serves `files` (name, content) from `dir/www` as a deployment server does. Returns the
/// server (keep it while blades boot) and its URL as blades see it (`http://10.0.2.2:<port>`).
pub fn serve_files(dir: &Path, files: &[(&str, &str)]) -> (http::HttpDir, String) {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    for (name, content) in files {
        std::fs::write(www.join(name), content).expect("a served file");
    }
    let server = http::HttpDir::serve(&www);
    let url = format!("http://10.0.2.2:{}", server.port);
    (server, url)
}

/// The lab's blade1 with the lab SAN (`lun_mib` each), booting with the lab configuration
/// fetched from [`serve_lab_config`]: what single-blade tests that make authorised calls use.
/// Returns the configuration's server too: keep it while the blade boots.
pub fn start_lab_blade1(name: &str, img: &Image, lun_mib: u64) -> (Blade, http::HttpDir) {
    start_lab_blade1_with(name, img, lun_mib, "")
}

/// The same with `extra` appended to the served configuration.
pub fn start_lab_blade1_with(name: &str, img: &Image, lun_mib: u64, extra: &str) -> (Blade, http::HttpDir) {
    let dir = work_dir(name);
    let (server, config) = serve_lab_config_with(&dir, extra);
    let spec =
        BladeSpec::new(name, "52:54:00:b1:ad:01", Boot::Direct { cmdline: format!("bladevisor.node=blade1 {config}") });
    (Blade::start_with_san_in(spec, img, dir, lun_mib), server)
}

#[derive(Debug, Clone)]
pub struct BladeSpec {
    pub name: String,
    pub mac: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub boot: Boot,
    pub luns: Vec<Lun>,
    /// The blade's name in the cluster (what its certificate names).
    pub node: String,
    /// Host port forwarded to the blade's API (7480); a free one when None.
    pub host_api_port: Option<u16>,
    /// Host port forwarded to the blade's TLS API (7443); a free one when None.
    pub host_tls_port: Option<u16>,
    /// A second NIC on the peer link between two blades.
    pub peer: Option<PeerNic>,
    /// Whether the SAN's controllers announce LUNs added and removed (virtio-scsi `hotplug`);
    /// off, they behave like FC HBAs: a new LUN appears only when the host is rescanned.
    pub san_hotplug: bool,
}

/// One end of the lab's peer link: a point-to-point Ethernet between two QEMUs, as UDP
/// datagrams on the host's loopback (either end may restart; the link comes back).
#[derive(Debug, Clone)]
pub struct PeerNic {
    pub mac: String,
    pub local_port: u16,
    pub remote_port: u16,
}

impl BladeSpec {
    pub fn new(name: &str, mac: &str, boot: Boot) -> Self {
        BladeSpec {
            name: name.into(),
            mac: mac.into(),
            memory_mib: 2048,
            cpus: 2,
            boot,
            luns: vec![],
            node: "blade1".into(),
            host_api_port: None,
            host_tls_port: None,
            peer: None,
            san_hotplug: true,
        }
    }
}

/// A running emulated blade. Killed when dropped.
pub struct Blade {
    pub spec: BladeSpec,
    pub dir: PathBuf,
    pub console: PathBuf,
    pub qmp_path: PathBuf,
    pub api_port: u16,
    pub tls_port: u16,
    pub started: Instant,
    child: Child,
    /// QEMU's arguments (also written to `qemu.args` for people), to start the same again.
    args: Vec<String>,
    /// Times QEMU was started again after it aborted before the blade ran anything.
    restarts: u32,
}

/// The lab's work folder for one blade of one test.
pub fn work_dir(name: &str) -> PathBuf {
    let d = repo_root().join("target/lab").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("lab work dir");
    d
}

impl Blade {
    /// The QEMU command line for a blade (TCG: see NOTES, KVM does not work on these hosts).
    pub fn qemu_args(spec: &BladeSpec, img: &Image, dir: &Path, api_port: u16, tls_port: u16) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            spec.name.clone(),
            "-accel".into(),
            "tcg".into(),
            "-machine".into(),
            "q35".into(),
            // No SVM in the emulated CPU (qemu64 has it): the blade would load kvm_amd on TCG's
            // emulation of it and run its guests with KVM nested inside TCG, which this lab does
            // not test. Lab blades run their guests under TCG, saying so.
            "-cpu".into(),
            "qemu64,-svm".into(),
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            spec.cpus.to_string(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", dir.join("console.log").display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
            "-device".into(),
            "i6300esb".into(),
            // Entropy: under TCG the guest has no RDRAND, and udev's coldplug stalls until the
            // kernel's pool is ready. Real blades have a hardware source.
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
        let mut netdev =
            format!("user,id=mgmt,hostfwd=tcp:127.0.0.1:{api_port}-:7480,hostfwd=tcp:127.0.0.1:{tls_port}-:7443");
        match &spec.boot {
            Boot::Direct { cmdline } => {
                a.extend(["-kernel".into(), img.kernel.display().to_string()]);
                a.extend(["-initrd".into(), img.initrd.display().to_string()]);
                a.extend(["-append".into(), format!("console=ttyS0 panic=-1 {cmdline}").trim().to_string()]);
            }
            Boot::Pxe { tftp_dir, bootfile } => {
                netdev.push_str(&format!(",tftp={},bootfile={bootfile}", tftp_dir.display()));
                a.extend(["-boot".into(), "n".into()]);
            }
        }
        a.extend(["-netdev".into(), netdev, "-device".into(), format!("virtio-net-pci,netdev=mgmt,mac={}", spec.mac)]);
        if let Some(p) = &spec.peer {
            a.extend([
                "-netdev".into(),
                format!(
                    "dgram,id=peer,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                    p.local_port, p.remote_port
                ),
                // Slot 9: named after the management NIC (slot 4), which stays the first.
                "-device".into(),
                format!("virtio-net-pci,netdev=peer,mac={},addr=0x9", p.mac),
            ]);
        }
        if !spec.luns.is_empty() {
            let hotplug = if spec.san_hotplug { "" } else { ",hotplug=off" };
            a.extend([
                "-device".into(),
                format!("virtio-scsi-pci,id=hba0{hotplug}"),
                "-device".into(),
                format!("virtio-scsi-pci,id=hba1{hotplug}"),
            ]);
            for (i, lun) in spec.luns.iter().enumerate() {
                a.extend(["-blockdev".into(), lun.blockdev(i).to_string()]);
                for hba in 0..2 {
                    a.extend(["-device".into(), lun.device(i, hba).to_string()]);
                }
            }
        }
        a
    }

    /// A blade of the lab with the lab SAN attached (its LUN files in the blade's work folder).
    pub fn start_with_san(spec: BladeSpec, img: &Image, lun_mib: u64) -> Blade {
        let dir = work_dir(&spec.name);
        Self::start_with_san_in(spec, img, dir, lun_mib)
    }

    /// The same in a work folder the caller prepared (and may have put a deployment's files in).
    pub fn start_with_san_in(mut spec: BladeSpec, img: &Image, dir: PathBuf, lun_mib: u64) -> Blade {
        spec.luns = lab_san(&dir, lun_mib);
        Self::start_in(spec, img, dir)
    }

    pub fn start(spec: BladeSpec, img: &Image) -> Blade {
        let dir = work_dir(&spec.name);
        Self::start_in(spec, img, dir)
    }

    pub fn start_in(spec: BladeSpec, img: &Image, dir: PathBuf) -> Blade {
        let mut tries = 0;
        loop {
            let mut b = Self::spawn(spec.clone(), img, dir.clone());
            // A port that was free when picked may be taken by the time QEMU binds it (another
            // process's outgoing connection): QEMU then exits at once. Pick another.
            std::thread::sleep(Duration::from_millis(700));
            let lost = matches!(b.child.try_wait(), Ok(Some(_)))
                && std::fs::read_to_string(dir.join("qemu.stderr"))
                    .is_ok_and(|e| e.contains("Could not set up host forwarding"));
            tries += 1;
            if !lost || spec.host_api_port.is_some() || tries == 3 {
                return b;
            }
        }
    }

    fn spawn(spec: BladeSpec, img: &Image, dir: PathBuf) -> Blade {
        let api_port = spec.host_api_port.unwrap_or_else(free_port);
        let tls_port = spec.host_tls_port.unwrap_or_else(free_port);
        let args = Self::qemu_args(&spec, img, &dir, api_port, tls_port);
        std::fs::write(dir.join("qemu.args"), args.join("\n")).ok();
        let started = Instant::now();
        let child = Self::qemu(&args, &dir);
        let (console, qmp_path) = (dir.join("console.log"), dir.join("qmp.sock"));
        Blade { console, qmp_path, spec, dir, api_port, tls_port, started, child, args, restarts: 0 }
    }

    /// Starts QEMU with these arguments, its stderr to the work folder's `qemu.stderr`.
    fn qemu(args: &[String], dir: &Path) -> Child {
        let stderr = std::fs::File::create(dir.join("qemu.stderr")).expect("qemu.stderr");
        // Its own process group: a ctrl-c meant for the lab must not kill QEMU outright.
        Command::new("qemu-system-x86_64")
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("qemu-system-x86_64 runs (image/host-deps installs it)")
    }

    /// When QEMU itself aborted (SIGABRT: an assertion of the host's emulator, seen under TCG
    /// while the blade's kernel sizes PCI BARs) before the blade's kernel ran /init, nothing of
    /// the image ran and no disk was written: starts the same QEMU again, at most twice, and
    /// says so. The aborted run's console and stderr are kept beside (`*.aborted-N`).
    fn restart_after_host_fault(&mut self, st: std::process::ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt as _;
        if st.signal() != Some(nix::sys::signal::Signal::SIGABRT as i32)
            || self.restarts >= 2
            || self.console().contains("Run /init")
        {
            return false;
        }
        self.restarts += 1;
        let stderr = self.qemu_stderr();
        let fault = stderr.lines().last().unwrap_or("no message on its stderr").to_string();
        for f in ["console.log", "qemu.stderr"] {
            let _ = std::fs::rename(self.dir.join(f), self.dir.join(format!("{f}.aborted-{}", self.restarts)));
        }
        eprintln!(
            "lab: {}: QEMU aborted before the blade's kernel ran /init ({fault}): a fault of the host's emulator, \
             not of the image; starting it again",
            self.spec.name
        );
        self.started = Instant::now();
        self.child = Self::qemu(&self.args, &self.dir);
        true
    }

    /// Everything the blade has printed on its serial console so far.
    pub fn console(&self) -> String {
        let mut s = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.console) {
            let _ = f.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    fn qemu_stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default()
    }

    /// What a failing test prints: the console and QEMU's own complaints.
    pub fn report(&self) -> String {
        format!(
            "--- {} console ({}) ---\n{}\n--- qemu stderr ---\n{}",
            self.spec.name,
            self.console.display(),
            self.console(),
            self.qemu_stderr()
        )
    }

    /// The blade loses power: its QEMU is killed outright (no shutdown, no lease released).
    pub fn pull_the_plug(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for a console line containing `needle`; returns that line and when it was seen.
    pub fn wait_console(&mut self, needle: &str, limit: Duration) -> Result<(String, Duration), String> {
        let end = Instant::now() + limit;
        loop {
            if let Some(line) = self.console().lines().find(|l| l.contains(needle)) {
                return Ok((line.to_string(), self.started.elapsed()));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                if self.restart_after_host_fault(st) {
                    continue;
                }
                return Err(format!("QEMU exited ({st}) before the console showed {needle:?}\n{}", self.report()));
            }
            if Instant::now() >= end {
                return Err(format!("no {needle:?} on the console within {limit:?}\n{}", self.report()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The plain port: the status and the metrics.
    pub fn api(&self) -> Endpoint {
        Endpoint::Tcp(format!("127.0.0.1:{}", self.api_port))
    }

    /// The TLS port, as an operator reaches it: the blade verified with the lab CA.
    pub fn tls_api(&self) -> Endpoint {
        let config = lab_pki().operator.clone();
        Endpoint::Tls { addr: format!("127.0.0.1:{}", self.tls_port), name: self.spec.node.clone(), config }
    }

    /// Sends a request as the route table writes it (method, URL, body), raw answer back: the
    /// status and the metrics to the plain port, everything else over TLS.
    pub fn call(&self, req: &Request, token: Option<&str>) -> Result<Response, String> {
        let ep = match req {
            Request::Read(Read::Status | Read::Metrics) => self.api(),
            _ => self.tls_api(),
        };
        self.call_at(&ep, req, token)
    }

    /// Sends a request to the endpoint given.
    pub fn call_at(&self, ep: &Endpoint, req: &Request, token: Option<&str>) -> Result<Response, String> {
        let body = req.body().unwrap_or_default();
        call_with_body(ep, req.method(), &req.target(), token, &body, Duration::from_secs(20))
    }

    /// `GET /v1/status` through the forwarded port.
    pub fn status(&self) -> Result<Status, String> {
        let r = self.call(&Request::Read(Read::Status), None)?;
        if r.code != 200 {
            return Err(format!("HTTP {}: {}", r.code, r.body));
        }
        serde_json::from_str(&r.body).map_err(|e| format!("status is not the expected JSON ({e}): {}", r.body))
    }

    pub fn qmp(&self) -> Result<qmp::Qmp, String> {
        qmp::Qmp::connect(&self.qmp_path)
    }

    /// Waits for QEMU to exit; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Ok(st);
            }
            if Instant::now() >= end {
                return Err(format!("QEMU still runs after {limit:?}\n{}", self.report()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A free UDP port on the host's loopback.
pub fn free_udp_port() -> u16 {
    unique_port(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free UDP port")
    })
}
/// The two-blade lab: blade1 and blade2 on one SAN (the same LUN files, both paths each), a peer
/// link between them, and the cluster configuration (`tests/two-blades.toml`) served over HTTP.
pub struct TwoBlades {
    pub blades: [Blade; 2],
    pub dir: PathBuf,
    pub http: http::HttpDir,
}

impl TwoBlades {
    /// The spec of blade `n` (1 or 2) of the two-blade lab.
    pub fn spec(name: &str, n: usize, config_port: u16, link: (u16, u16), luns: &[Lun]) -> BladeSpec {
        let cmdline = format!(
            "bladevisor.node=blade{n} bladevisor.config=http://10.0.2.2:{config_port}/cluster.toml \
             bladevisor.credentials=http://10.0.2.2:{config_port}/{CREDENTIALS}"
        );
        let mut spec =
            BladeSpec::new(&format!("{name}-blade{n}"), &format!("52:54:00:b1:ad:0{n}"), Boot::Direct { cmdline });
        let (local_port, remote_port) = if n == 1 { link } else { (link.1, link.0) };
        spec.node = format!("blade{n}");
        spec.peer = Some(PeerNic { mac: format!("52:54:00:b1:be:0{n}"), local_port, remote_port });
        spec.luns = luns.to_vec();
        // One vCPU each: two TCG blades (and a guest inside one) share the host's two cores,
        // and a second vCPU starved of host time stalled a reboot (RCU: timer wakeup on cpu 1
        // did not happen) where one vCPU does not.
        spec.cpus = 1;
        spec
    }

    /// Boots both blades; `api_ports` fixes the host ports of their APIs, plain and TLS (free
    /// ones when None).
    pub fn start(name: &str, img: &Image, lun_mib: u64, api_ports: [Option<(u16, u16)>; 2]) -> TwoBlades {
        let dir = work_dir(name);
        let luns = lab_san(&dir, lun_mib);
        std::fs::copy(repo_root().join("tests/two-blades.toml"), dir.join("cluster.toml")).expect("lab config");
        Self::start_in(name, img, dir, luns, api_ports)
    }

    /// The two-blade lab with a lease area: a third LUN (`lab-leases`, 17 MiB: the lockspace and
    /// 16 lease slots) on both blades, `[ha]` with a short I/O timeout (failover in seconds, not
    /// minutes), a host id per blade; the demo guest has `ha = true`. The area is not
    /// initialised: a test runs `leases init`.
    pub fn start_ha(name: &str, img: &Image, lun_mib: u64) -> TwoBlades {
        let dir = work_dir(name);
        let mut luns = lab_san(&dir, lun_mib);
        let file = dir.join(format!("{}.lun", LEASE_LUN.0));
        std::fs::File::create(&file).and_then(|f| f.set_len(17 << 20)).expect("lease LUN");
        luns.push(Lun { file, wwn: LEASE_LUN.1.to_string(), serial: "LABLUN0099".into(), scsi_id: None });
        let base = std::fs::read_to_string(repo_root().join("tests/two-blades.toml")).expect("lab config");
        let config = base
            .replace("[nodes.blade1]\n", "[nodes.blade1]\nhost-id = 1\n")
            .replace("[nodes.blade2]\n", "[nodes.blade2]\nhost-id = 2\n")
            .replace(
                "[aliases]\n",
                &format!(
                    "[ha]\nlease-alias = \"{}\"\nio-timeout-s = 2\nslots = 16\n\n[aliases]\n{} = {{ wwid = \"{}\", paths = 2 }}\n",
                    LEASE_LUN.0,
                    LEASE_LUN.0,
                    wwid_of(LEASE_LUN.1)
                ),
            )
            .replace("stop-timeout-s = 10", "stop-timeout-s = 10\nha = true");
        std::fs::write(dir.join("cluster.toml"), config).expect("lab config");
        Self::start_in(name, img, dir, luns, [None, None])
    }

    fn start_in(
        name: &str,
        img: &Image,
        dir: PathBuf,
        luns: Vec<Lun>,
        api_ports: [Option<(u16, u16)>; 2],
    ) -> TwoBlades {
        let http = http::HttpDir::serve(&dir);
        Self::start_served(name, img, dir, http, luns, api_ports, true)
    }

    /// Boots both blades with `http` already serving `dir` (the configuration may name its port).
    pub fn start_served(
        name: &str,
        img: &Image,
        dir: PathBuf,
        http: http::HttpDir,
        luns: Vec<Lun>,
        api_ports: [Option<(u16, u16)>; 2],
        san_hotplug: bool,
    ) -> TwoBlades {
        let link = (free_udp_port(), free_udp_port());
        pki::serve_credentials(&dir);
        let blades = [1, 2].map(|n| {
            let mut spec = Self::spec(name, n, http.port, link, &luns);
            spec.host_api_port = api_ports[n - 1].map(|p| p.0);
            spec.host_tls_port = api_ports[n - 1].map(|p| p.1);
            spec.san_hotplug = san_hotplug;
            let bdir = dir.join(format!("blade{n}"));
            std::fs::create_dir_all(&bdir).expect("blade dir");
            Blade::start_in(spec, img, bdir)
        });
        TwoBlades { blades, dir, http }
    }

    /// Boots blade `n` again (same spec, same SAN, same ports) after its QEMU ended.
    pub fn restart(&mut self, n: usize, img: &Image) {
        let b = &mut self.blades[n - 1];
        let mut spec = b.spec.clone();
        spec.host_api_port = Some(b.api_port);
        spec.host_tls_port = Some(b.tls_port);
        let dir = b.dir.clone();
        let _ = std::fs::rename(&b.console, dir.join("console.before-reboot.log"));
        self.blades[n - 1] = Blade::start_in(spec, img, dir);
    }

    pub fn report(&self) -> String {
        format!("{}\n{}", self.blades[0].report(), self.blades[1].report())
    }
}

impl Drop for Blade {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
