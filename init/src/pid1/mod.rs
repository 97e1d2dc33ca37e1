//! What only PID 1 does: early mounts, reaping every orphan, power signals, and the main loop
//! that drives the supervisor. It never returns and never panics out: a panic in the loop is
//! caught, logged, and the loop resumes; a failed boot step leaves a degraded blade that still
//! answers on its control socket.

pub mod boot;
pub mod edge;
pub mod host;
pub mod leasekeeper;
pub mod mounts;
pub mod powerbutton;
pub mod rootfs;
pub mod shutdown;
pub mod storage;
mod upgrade;
pub mod workers;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use signal_hook::consts::*;
use tracing::{error, info, warn};

use crate::api;
use crate::config;
use crate::coord::{Coordinator, Report};
use crate::proto;
use crate::proto::request::{Operator, Refusal, Reply, Request};
use crate::supervisor::cgroup::Cgroups;
use crate::supervisor::policy::Exit;
use crate::supervisor::process::ProcessRuntime;
use crate::supervisor::{ServiceState, Supervisor};
use shutdown::PowerAction;

/// Everything that wakes the main loop.
pub enum Event {
    Signal(i32),
    /// The ACPI power button was pressed.
    PowerButton,
    /// An operator's, a peer's or anyone's read, from the API; the reply goes back on the sender.
    Call(Request, Sender<Reply>),
    /// The boot sequence's questions (never from the API).
    Boot(BootAsk),
    /// A worker's report to the guest coordinator (owner checks, migrations, evacuation).
    Report(Report),
    /// A change the storage watch saw.
    Storage(crate::storage::StorageEvent),
    /// The upgrade's fetching worker.
    Upgrade(upgrade::UpgradeReport),
}

/// What the boot sequence asks the main loop.
pub enum BootAsk {
    AddService(Box<config::ServiceSpec>, Sender<Result<(), String>>),
    ServiceState(String, Sender<Option<ServiceState>>),
    /// Start a service the image declares `enabled = false` for the boot to start.
    StartService(String, Sender<Result<(), crate::supervisor::RequestError>>),
    /// A boot phase started or ended.
    Phase(BootProgress),
    /// The blade has its credentials: the TLS port may open.
    Credentials(config::credentials::Keys, std::sync::Arc<crate::tls::ClusterTls>),
    /// The boot sequence is done.
    Done(Box<boot::BootOutcome>),
}

/// How the boot is going, for status while it runs.
pub enum BootProgress {
    Started(String),
    Done(proto::BootPhase),
}

/// How long a caller waits for the main loop before giving up. Long enough for an answer a
/// worker gives (an incoming guest's listener, an owner check).
const LOOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends the main loop a question made with a reply channel and waits for the answer (None
/// when the loop does not answer in time).
pub fn ask_loop<T>(tx: &Sender<Event>, make: impl FnOnce(Sender<T>) -> Event) -> Option<T> {
    ask_loop_for(tx, LOOP_TIMEOUT, make)
}

fn ask_loop_for<T>(tx: &Sender<Event>, limit: Duration, make: impl FnOnce(Sender<T>) -> Event) -> Option<T> {
    let (rtx, rrx) = mpsc::channel();
    tx.send(make(rtx)).ok()?;
    rrx.recv_timeout(limit).ok()
}

/// How long an API caller waits for its answer: a reload rescans and waits for new maps
/// (bounded by `storage::reload`), `--all` for every blade's.
fn answer_limit(req: &Request) -> Duration {
    use crate::storage::reload::{MAP_WAIT, SCAN_DEADLINE};
    match req {
        Request::Operator(Operator::StorageReload { all: false }) => SCAN_DEADLINE + MAP_WAIT + LOOP_TIMEOUT,
        Request::Operator(Operator::StorageReload { all: true }) => (SCAN_DEADLINE + MAP_WAIT + LOOP_TIMEOUT) * 2,
        _ => LOOP_TIMEOUT,
    }
}

/// What the API's listeners hand their requests to: the main loop, through its channel.
pub fn dispatch(tx: Sender<Event>) -> api::Dispatch {
    let tx = std::sync::Mutex::new(tx);
    std::sync::Arc::new(move |req| {
        let tx = tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ask_loop_for(&tx, answer_limit(&req), |r| Event::Call(req, r))
            .unwrap_or_else(|| Err(Refusal::unavailable("the supervisor did not answer in time")))
    })
}

/// Reaps every exited child (ours or an orphan re-parented to us) without blocking; a child a
/// worker claimed (`crate::child::run`) is left to that worker.
pub fn reap_all(mut on_exit: impl FnMut(u32, Exit)) {
    crate::child::reap(|pid, e| on_exit(pid, if e < 0 { Exit::Signal(-e) } else { Exit::Code(e) }));
}

/// The state the main loop owns.
pub struct Init {
    sup: Supervisor,
    rt: ProcessRuntime,
    tx: Sender<Event>,
    is_pid1: bool,
    /// The API's ports: plain (status and metrics) and TLS (every call).
    api_port: Option<u16>,
    api_tls_port: Option<u16>,
    node: String,
    version: String,
    /// What the boot sequence found; None while it runs.
    boot: Option<boot::BootOutcome>,
    /// While it runs: the phases done, and the one under way with when it started.
    boot_progress: (Vec<proto::BootPhase>, Option<(String, Instant)>),
    /// Whether the TLS port is open (it opens once the credentials are in).
    tls_open: bool,
    storage: crate::storage::Shared,
    /// The guests' coordinator, once boot has told which guests may run here.
    coord: Option<Coordinator>,
    /// What the coordinator's effects need at the edge: reply channels, cancel flags, consoles.
    edge: edge::Edge,
    /// Whether guests get KVM: asked once the boot's coldplug has loaded the CPU's KVM module
    /// (it is a module, loaded by udev: at PID 1's start `/dev/kvm` does not exist yet).
    kvm: bool,
    /// Problems found during boot (configuration, mounts), kept for status.
    boot_problems: Vec<String>,
    shutdown: Option<(PowerAction, Instant)>,
    /// An upgrade under way, or the last that failed.
    upgrade: Option<upgrade::Run>,
    /// This boot is an upgrade's: from which release, and whether it still has to undrain.
    after_upgrade: Option<upgrade::AfterUpgrade>,
    ready_ms: Option<u64>,
    orphans_reaped: u64,
}

/// What `status` says of a cluster without a lease area.
const NO_LEASES: &str = "no [ha] lease area: one copy per guest rests on the blades asking each other, \
                         not on a lock on the SAN (README: storage leases)";

/// How long an orderly shutdown may take before what is left is killed regardless.
const SHUTDOWN_CAP_EXTRA: Duration = Duration::from_secs(5);
/// The loop wakes at least this often, to reap anything a coalesced SIGCHLD hid.
const IDLE_WAKE: Duration = Duration::from_secs(1);

impl Init {
    fn handle_exit(&mut self, pid: u32, exit: Exit) {
        let now = Instant::now();
        if !self.sup.on_exit(pid, exit, &mut self.rt, now) {
            self.orphans_reaped += 1;
            tracing::debug!(pid, %exit, "reaped orphan");
        }
    }

    fn begin_shutdown(&mut self, action: PowerAction, why: &str) {
        if self.shutdown.is_some() {
            info!(action = action.as_str(), "shutdown already in progress");
            return;
        }
        info!(action = action.as_str(), "{why}: shutting down");
        self.shutdown = Some((action, Instant::now()));
        if let Some(c) = &mut self.coord {
            c.shutting_down();
        }
        if let Some(area) = &self.edge.area {
            leasekeeper::leave(area.clone(), self.sup.stop_budget());
        }
        self.sup.begin_shutdown(&mut self.rt, Instant::now());
    }

    pub fn status(&self) -> proto::Status {
        let (luns, hbas, aliases_source) = self.storage_snapshot();
        proto::Status {
            node: self.node.clone(),
            version: self.version.clone(),
            ready: self.ready_ms.is_some(),
            ready_ms: self.ready_ms,
            uptime_s: crate::logging::boot_ms() as f64 / 1000.0,
            shutting_down: self.shutdown.map(|(a, _)| a),
            degraded: self.degraded(),
            warnings: self.warnings(),
            orphans_reaped: self.orphans_reaped,
            cluster: self.boot.as_ref().and_then(|b| b.cluster.as_ref()).map(|c| c.cluster.name.clone()),
            config_source: self.boot.as_ref().map(|b| b.config_source.clone()),
            credentials: self.boot.as_ref().map(|b| b.credentials.clone()),
            cert_not_after: self.boot.as_ref().and_then(|b| b.tls.as_ref()).and_then(|t| t.not_after),
            clock: self.boot.as_ref().and_then(|b| b.clock.clone()),
            management: self.boot.as_ref().and_then(|b| b.management.clone()),
            boot_phases: self.boot.as_ref().map(|b| b.phases.clone()).unwrap_or_else(|| self.boot_progress.0.clone()),
            booting: self
                .boot_progress
                .1
                .as_ref()
                .filter(|_| self.boot.is_none())
                .map(|(name, since)| format!("{name} ({:.0} s so far)", since.elapsed().as_secs_f64())),
            luns,
            hbas,
            aliases_source: Some(aliases_source).filter(|s| !s.is_empty()),
            guests: self.guests_with_usage(),
            migration_stats: self.coord.as_ref().map(|c| c.migration_stats().clone()).unwrap_or_default(),
            drained: self.coord.as_ref().and_then(|c| c.drained().map(String::from)),
            drain_pending: !self.coord.as_ref().is_some_and(|c| c.drain_learnt()),
            drained_nodes: self.coord.as_ref().map(|c| c.drained_nodes()).unwrap_or_default(),
            migrations: self.coord.as_ref().map(|c| c.migration_status(Instant::now())).unwrap_or_default(),
            evacuation: self.coord.as_ref().and_then(|c| c.evacuation()),
            upgrade: self.upgrade.as_ref().map(|r| r.status.clone()),
            upgraded: self.after_upgrade.as_ref().map(|a| a.upgraded.clone()),
            kvm: self.kvm,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_time: host::cpu_time(),
            memory: memory(),
            services: self.services_with_usage(),
            leases: self
                .edge
                .area
                .as_ref()
                .zip(self.coord.as_ref().and_then(|c| c.leases().map(|l| (l, c.lease_events(Instant::now())))))
                .map(|(a, (s, (restarts, events)))| a.status(s.clone(), restarts, events)),
        }
    }

    fn storage_snapshot(&self) -> (Vec<crate::storage::LunStatus>, Vec<crate::storage::sysfs::FcHost>, String) {
        let s = crate::storage::lock(&self.storage);
        (s.luns.clone(), s.hbas.clone(), s.table_source.clone())
    }

    /// The services' status, each running one with the memory its cgroup uses and the CPU
    /// time it has used.
    fn services_with_usage(&self) -> Vec<crate::supervisor::ServiceStatus> {
        let mut v = self.sup.status(Instant::now());
        for s in v.iter_mut().filter(|s| s.pid.is_some()) {
            let u = self.rt.cgroups.usage(&s.name).unwrap_or_default();
            (s.memory_bytes, s.memory_file_bytes, s.cpu_seconds) = (u.memory_bytes, u.memory_file_bytes, u.cpu_seconds);
        }
        v
    }

    /// The guests' status, each running one with what its cgroup has used.
    fn guests_with_usage(&self) -> Vec<proto::GuestStatus> {
        let mut guests = self.coord.as_ref().map(|c| c.guest_status(&self.facts())).unwrap_or_default();
        let nics = |g: &str| {
            self.boot.as_ref().and_then(|b| b.cluster.as_ref()).and_then(|c| c.guests.get(g)).map(|s| s.nics.len())
        };
        for g in guests.iter_mut().filter(|g| g.pid.is_some()) {
            g.usage = self.rt.cgroups.usage(&crate::coord::service_name(&g.name)).map(|mut u| {
                host::name_disks(std::path::Path::new("/sys"), &mut u.disks);
                u.nics = host::nic_io(std::path::Path::new("/sys/class/net"), &g.name, nics(&g.name).unwrap_or(0));
                u
            });
        }
        guests
    }

    /// Opens the read-only port at once (status and metrics answer through the whole boot).
    fn open_plain_api(&self) -> Option<String> {
        let (port, tls) = (self.api_port?, self.api_tls_port.unwrap_or(7443));
        let why = format!(
            "port {port} serves only GET /v1/status and GET /metrics: every other call goes over TLS to port {tls} \
             (open once the blade has its credentials: see status)"
        );
        match api::serve_plain(port, why, dispatch(self.tx.clone())) {
            Ok(()) => {
                info!(port, "API listening (status and metrics)");
                None
            }
            Err(e) => {
                error!("{e}");
                Some(e)
            }
        }
    }

    /// Opens the TLS port, once, with the blade's credentials.
    fn open_tls_api(&mut self, keys: config::credentials::Keys, tls: &crate::tls::ClusterTls) {
        let Some(port) = self.api_tls_port.filter(|_| self.api_port.is_some() && !self.tls_open) else { return };
        match api::serve_tls(port, keys, tls, dispatch(self.tx.clone())) {
            Ok(()) => {
                info!(port, "API listening (TLS: every call)");
                self.tls_open = true;
            }
            Err(e) => {
                error!("{e}");
                self.boot_problems.push(e);
            }
        }
    }

    /// The boot sequence is done: take on the node's identity and open the API.
    fn boot_done(&mut self, outcome: boot::BootOutcome) {
        self.node = outcome.node.clone();
        self.kvm = crate::qemu::kvm_usable(Path::new("/dev/kvm"));
        if self.is_pid1 {
            if let Err(e) = nix::unistd::sethostname(&self.node) {
                warn!("cannot set hostname {}: {e}", self.node);
            }
        }
        if let Some(servers) = outcome.cluster.as_ref().and_then(|c| c.time.servers().ok()).filter(|s| !s.is_empty()) {
            // Kept right while the blade runs: asked again every 15 minutes, stepped when off.
            crate::spawn_worker("clock", move || loop {
                std::thread::sleep(Duration::from_secs(900));
                match crate::net::sntp::sync(&servers, crate::net::sntp::step_clock) {
                    Ok(said) if said.contains("stepped") => warn!("clock {said}"),
                    Ok(_) => {}
                    Err(e) => warn!("clock: {e}"),
                }
            });
        }
        if let Some(c) = &outcome.cluster {
            if let Some(url) = &c.logging.remote {
                match crate::logging::remote::start(url, c.logging.format, self.node.clone()) {
                    Ok(()) => {
                        info!(collector = %url, format = ?c.logging.format, "logs are sent to the remote collector")
                    }
                    Err(e) => {
                        error!("logging: {e}");
                        self.boot_problems.push(format!("logging: {e}"));
                    }
                }
            }
        }
        if !self.tls_open && self.api_port.is_some() {
            warn!("no credentials ({}): the API serves only the status and the metrics", outcome.credentials);
        }
        let outcome = outcome;
        let mut coord = Coordinator::new(&self.node, outcome.cluster.as_ref());
        if let Some(area) =
            outcome.cluster.as_ref().and_then(|c| crate::leases::Area::of(c, &self.node, Path::new("/dev/mapper")))
        {
            for spec in crate::leases::daemon_services() {
                if let Err(e) = self.sup.add(spec, Instant::now()) {
                    error!("lease daemons: {e}");
                }
            }
            leasekeeper::keep(area.clone(), self.tx.clone());
            self.edge.area = Some(area);
        }
        if let Some(c) = &outcome.cluster {
            if coord.guest_specs().next().is_some() && !self.kvm {
                warn!("/dev/kvm is not usable here: guests run under TCG (emulation), far slower");
            }
            for (name, b) in &c.bridges {
                let spec = crate::net::bridge_service(name, b.uplink.as_deref());
                if let Err(e) = self.sup.add(spec, Instant::now()) {
                    error!("bridge {name}: {e}");
                }
            }
        }
        self.boot = Some(outcome);
        coord.start();
        self.coord = Some(coord);
        self.run_effects();
    }

    /// Re-reads the alias table on a worker (it may fetch over the network) and hands the
    /// outcome to `done`.
    fn reload_storage(&self, done: impl FnOnce(Result<crate::storage::reload::ReloadReport, String>) + Send + 'static) {
        let shared = self.storage.clone();
        crate::spawn_worker("storage-reload", move || done(crate::storage::reload(&shared)));
    }

    fn handle_signal(&mut self, sig: i32) {
        match sig {
            SIGCHLD => {}
            SIGHUP => {
                // Re-read the alias table (applied without tearing down maps in use) and check
                // image.toml (whose changes apply at the next boot).
                self.reload_storage(|r| match r {
                    Ok(r) => info!("SIGHUP: {}", r.message),
                    Err(e) => error!("SIGHUP: {e}"),
                });
                match config::load_image(&config::etc_dir().join("image.toml")) {
                    Ok(_) => info!("SIGHUP: image.toml is valid; changes to it apply at the next boot"),
                    Err(e) => error!("SIGHUP: {e}"),
                }
            }
            s => {
                if let Some(action) = shutdown::action_for_signal(s) {
                    let name = nix::sys::signal::Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?");
                    self.begin_shutdown(action, &format!("received {name}"));
                }
            }
        }
    }

    /// One pass of the loop: waits for an event or the next deadline, then brings everything up
    /// to date. Returns the power action when the shutdown is complete.
    fn step(&mut self, rx: &Receiver<Event>, next: &mut Instant) -> Option<PowerAction> {
        let timeout = next.saturating_duration_since(Instant::now()).min(IDLE_WAKE);
        match rx.recv_timeout(timeout) {
            Ok(Event::Signal(sig)) => self.handle_signal(sig),
            Ok(Event::PowerButton) => self.begin_shutdown(PowerAction::Poweroff, "power button pressed"),
            Ok(Event::Call(req, reply)) => self.call(req, reply),
            Ok(Event::Boot(ask)) => self.boot_ask(ask),
            Ok(Event::Report(r)) => self.report(r),
            Ok(Event::Upgrade(r)) => self.upgrade_report(r),
            Ok(Event::Storage(e)) => {
                if let (Some(c), Some(alias)) = (&mut self.coord, e.alias()) {
                    c.storage_changed(alias);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_WAKE),
        }
        let mut exits = Vec::new();
        reap_all(|pid, exit| exits.push((pid, exit)));
        for (pid, exit) in exits {
            self.handle_exit(pid, exit);
        }
        if self.shutdown.is_none() {
            self.tick_guests();
            self.tick_upgrade();
        }
        self.note_disks_in_use();
        let now = Instant::now();
        *next = self.sup.tick(&mut self.rt, now).unwrap_or(now + IDLE_WAKE);
        if self.ready_ms.is_none() && self.shutdown.is_none() && self.boot_settled() {
            let ms = crate::logging::boot_ms();
            self.ready_ms = Some(ms);
            let degraded = self.degraded();
            let state = if degraded.is_empty() { "" } else { " (degraded)" };
            info!("bladevisor ready{state}: node {}, version {}, {ms} ms since kernel start", self.node, self.version);
            for d in &degraded {
                warn!("degraded: {d}");
            }
        }
        self.undrain_after_upgrade();
        if let Some((action, since)) = self.shutdown {
            let cap = self.sup.stop_budget() + SHUTDOWN_CAP_EXTRA;
            if self.sup.all_stopped() || since.elapsed() >= cap {
                if !self.sup.all_stopped() {
                    warn!(cap_s = cap.as_secs_f64(), "services did not stop within the shutdown budget");
                }
                return Some(action);
            }
        }
        None
    }

    /// Tells storage which aliases the guests here use (a reload keeps those).
    fn note_disks_in_use(&self) {
        let Some(c) = &self.coord else { return };
        let used = storage::in_use(c.disks_in_use(&self.facts()).into_iter());
        let mut s = crate::storage::lock(&self.storage);
        if s.in_use != used {
            s.in_use = used;
        }
    }

    /// Boot is settled when no enabled service is still on its way up.
    fn boot_settled(&self) -> bool {
        self.boot.is_some()
            && !self
                .sup
                .status(Instant::now())
                .iter()
                .any(|s| matches!(s.state, ServiceState::Waiting | ServiceState::Starting))
    }

    /// What the operator should know that is not a fault.
    fn warnings(&self) -> Vec<String> {
        let cluster = self.boot.as_ref().and_then(|b| b.cluster.as_ref());
        let mut w = match cluster {
            Some(c) if c.ha.is_none() => vec![NO_LEASES.to_string()],
            _ => vec![],
        };
        if cluster.is_some_and(|c| c.cluster.token.is_some()) {
            w.push(
                "the configuration holds [cluster] token: whoever can read it controls the cluster; give operators \
                 [operators.<name>] token-sha256 and blades a credentials file (README: credentials)"
                    .into(),
            );
        }
        w.extend(crate::storage::lock(&self.storage).warnings());
        w.extend(self.cert_expiry().filter(|(fault, _)| !fault).map(|(_, why)| why));
        w
    }

    /// Whether this blade's certificate expires soon (a warning) or has expired (a fault).
    fn cert_expiry(&self) -> Option<(bool, String)> {
        let tls = self.boot.as_ref().and_then(|b| b.tls.as_ref())?;
        let now = crate::logging::unix_secs() as i64;
        crate::tls::expiry(&tls.node, tls.not_after?, now)
    }

    /// Why the blade is not fully healthy: problems found at boot, and services that failed.
    fn degraded(&self) -> Vec<String> {
        let failed = self.sup.status(Instant::now()).into_iter().filter(|s| s.state == ServiceState::Failed);
        let failed = failed.map(|s| format!("service {} failed: {}", s.name, s.reason.unwrap_or_default()));
        let boot = self.boot.iter().flat_map(|b| b.problems.iter().cloned());
        let luns = crate::storage::lock(&self.storage).problems();
        let cert = self.cert_expiry().filter(|(fault, _)| *fault).map(|(_, why)| why);
        self.boot_problems.iter().cloned().chain(boot).chain(failed).chain(luns).chain(cert).collect()
    }
}

pub use host::{blade_macs, memory};
use host::{raise_open_files_limit, start_signal_thread};

/// The init's entry point: never returns.
pub fn run() -> ! {
    crate::logging::init();
    std::panic::set_hook(Box::new(|info| {
        error!("panic: {info}");
    }));
    let is_pid1 = std::process::id() == 1;
    let version = crate::image_version();
    info!(version = %version, pid1 = is_pid1, "bladevisor init starting");
    let mut degraded = Vec::new();
    if is_pid1 {
        // In the initramfs: mount the compressed root and become its init (never returns unless
        // that fails).
        if let Some(image) = rootfs::image(Path::new("/")) {
            let why = rootfs::enter(&image);
            error!("{why}");
            degraded.push(why);
        }
        degraded.extend(mounts::mount_early());
        // ctrl-alt-del becomes SIGINT to us instead of an immediate reboot.
        let _ = nix::sys::reboot::set_cad_enabled(false);
    } else {
        // Outside PID 1 (development), adopt orphans of our services so they are still reaped.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    raise_open_files_limit();
    let cmdline = crate::cmdline::read(std::path::Path::new("/proc"));
    for u in &cmdline.unknown {
        warn!("unknown kernel command line key ignored: {u}");
    }
    let after_upgrade = upgrade::AfterUpgrade::from_cmdline(&cmdline);
    if let Some(a) = &after_upgrade {
        let from = a.upgraded.from.as_deref().unwrap_or("an unnamed release");
        info!("this boot is an in-place upgrade from release {from} to {version}");
    }
    let (tx, rx) = mpsc::channel();
    if let Err(e) = start_signal_thread(tx.clone()) {
        error!("{e}");
        degraded.push(e);
    }
    let image_file: PathBuf = config::etc_dir().join("image.toml");
    let image = match config::load_image(&image_file) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}; no services will run until it is fixed");
            degraded.push(e.to_string());
            config::services::ImageConfig::default()
        }
    };
    let prefix = std::env::var("BLADEVISOR_CGROUP").unwrap_or_else(|_| "bladevisor".into());
    let cgroups = Cgroups::new(std::path::Path::new("/proc/self/mountinfo"), &prefix).unwrap_or_else(|e| {
        warn!("services run without cgroups: {e}");
        Cgroups::disabled()
    });
    if let Err(e) = cgroups.enable_controllers() {
        warn!("guests' CPU, memory and I/O figures may be missing: {e}");
    }
    let run_dir = crate::run_dir();
    if let Err(e) = api::serve_control(&run_dir, dispatch(tx.clone())) {
        error!("{e}");
        degraded.push(e);
    }
    let storage: crate::storage::Shared = Default::default();
    let plan = boot::BootPlan {
        sys: PathBuf::from("/sys"),
        multipath_conf: PathBuf::from("/etc/multipath.conf"),
        storage: storage.clone(),
        settings: image.boot.clone(),
        cmdline,
        etc: config::etc_dir(),
        run: run_dir,
        class_net: PathBuf::from("/sys/class/net"),
        udev: PathBuf::from("/run/udev"),
    };
    if is_pid1 {
        let power_tx = tx.clone();
        powerbutton::watch("/sys/class/input".into(), "/dev/input".into(), move || {
            let _ = power_tx.send(Event::PowerButton);
        });
    }
    let boot_tx = tx.clone();
    crate::spawn_worker("boot", move || {
        // A bug in a boot step must still leave a blade that is ready (degraded) and can be
        // managed: its panic becomes a reason, not a boot that never ends.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| boot::run(&plan, &boot_tx)))
            .unwrap_or_else(|p| {
                let why = format!("the boot sequence failed: {}", crate::panic_message(&p));
                error!("{why}");
                boot::BootOutcome {
                    node: "bladevisor".into(),
                    cluster: None,
                    config_source: "none (boot failed)".into(),
                    management: None,
                    problems: vec![why],
                    phases: vec![],
                    keys: Default::default(),
                    credentials: "none (boot failed)".into(),
                    tls: None,
                    clock: None,
                }
            });
        let _ = boot_tx.send(Event::Boot(BootAsk::Done(Box::new(outcome))));
        // What this blade's QEMU provides, for arriving guests: asked once the boot is done
        // (nothing before can arrive) and at the lowest CPU priority (this thread, and the QEMU
        // it runs inherits it). Run during the boot, reading QEMU and its libraries out of the
        // compressed root cost the boot's udev and storage steps about a second of CPU on the
        // lab's two emulated CPUs. An arrival waits for the answer (api::http).
        let _ = rustix::process::setpriority_process(None, 19);
        crate::qemu::offer::learn(Path::new(crate::qemu::QEMU))
    });
    let mut init = Init {
        sup: Supervisor::new(image.services, Instant::now()),
        rt: ProcessRuntime::new(cgroups),
        tx,
        is_pid1,
        api_port: image.boot.api_port,
        api_tls_port: image.boot.tls_port(),
        node: "bladevisor".into(),
        version,
        boot: None,
        boot_progress: Default::default(),
        tls_open: false,
        storage,
        coord: None,
        edge: Default::default(),
        kvm: false,
        boot_problems: degraded,
        shutdown: None,
        upgrade: None,
        after_upgrade,
        ready_ms: None,
        orphans_reaped: 0,
    };
    if let Some(e) = init.open_plain_api() {
        init.boot_problems.push(e);
    }
    let mut next = Instant::now();
    loop {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| init.step(&rx, &mut next)));
        match r {
            Ok(Some(action)) => {
                if init.is_pid1 {
                    shutdown::finish(action);
                    // Only reached when reboot(2) failed: keep reaping, keep answering.
                    init.shutdown = None;
                } else {
                    info!(action = action.as_str(), "not PID 1: exiting instead of {}", action.as_str());
                    std::process::exit(0);
                }
            }
            Ok(None) => {}
            Err(p) => {
                error!("main loop panicked: {}; continuing", crate::panic_message(&p));
                next = Instant::now() + Duration::from_millis(100);
            }
        }
    }
}
