//! The boot sequence, in the order a blade comes up: management network, shared configuration,
//! identity, API. It runs on its own thread and asks the main loop (typed [`BootAsk`] events,
//! never HTTP) to add services and for their state, so PID 1 keeps reaping and answering while
//! the boot waits on DHCP or a slow configuration server.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{ask_loop, BootAsk, BootProgress, Event};
use crate::cmdline::KernelCmdline;
use crate::config::cluster::{find_node, parse_cluster, Management};
use crate::config::fetch::get_with_retries;
use crate::config::services::BootSettings;
use crate::config::{self, ClusterConfig};
use crate::supervisor::ServiceState;

/// What the boot sequence works from.
#[derive(Debug, Clone)]
pub struct BootPlan {
    pub settings: BootSettings,
    pub cmdline: KernelCmdline,
    pub etc: PathBuf,
    pub run: PathBuf,
    pub class_net: PathBuf,
    /// `/run/udev`: whether udevd has handled a NIC yet.
    pub udev: PathBuf,
    /// `/sys`: where HBAs, disks and maps are read.
    pub sys: PathBuf,
    /// Where multipath's configuration is written.
    pub multipath_conf: PathBuf,
    /// The storage watch's shared state (storage bring-up runs when `settings.storage`).
    pub storage: crate::storage::Shared,
}

/// What it found, handed to the main loop when it is done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootOutcome {
    pub node: String,
    pub cluster: Option<ClusterConfig>,
    /// Which configuration is in use, in words ("fetched from <url>", "baked ...").
    pub config_source: String,
    /// "interface address", once the management network is up.
    pub management: Option<String>,
    /// Why the blade is degraded, one line each.
    pub problems: Vec<String>,
    /// The named steps of the boot as they ran, with how long each took.
    pub phases: Vec<crate::proto::BootPhase>,
    /// What callers are checked against: operators from the configuration, the peer token from
    /// the credentials file (or the first release's `[cluster] token`).
    pub keys: crate::config::credentials::Keys,
    /// Where the peer token came from, or why there is none (for status).
    pub credentials: String,
    /// This blade's TLS, from its credentials: none, and the API is read-only.
    pub tls: Option<std::sync::Arc<crate::tls::ClusterTls>>,
    /// How the clock was set at boot (None without `[time] ntp-servers`).
    pub clock: Option<String>,
}

impl BootOutcome {
    /// Runs one named step, logging and recording how long it took and what went wrong in it,
    /// and telling the main loop when it starts and ends (status shows the boot as it goes).
    pub fn phase<T>(&mut self, tx: &Sender<Event>, name: &str, step: impl FnOnce(&mut Self) -> T) -> T {
        let (t, before) = (Instant::now(), self.problems.len());
        let _ = tx.send(Event::Boot(BootAsk::Phase(BootProgress::Started(name.to_string()))));
        let r = step(self);
        let ms = t.elapsed().as_millis() as u64;
        let problems = self.problems.len().saturating_sub(before);
        info!(phase = name, ms, problems, "boot phase done");
        let done = crate::proto::BootPhase { name: name.to_string(), ms, problems };
        let _ = tx.send(Event::Boot(BootAsk::Phase(BootProgress::Done(done.clone()))));
        self.phases.push(done);
        r
    }
}

/// Which cluster configuration to use: the fetched one when it could be fetched and parsed,
/// else the baked one. Returns it with a description of its source and what went wrong.
pub fn choose_config(
    url: Option<&str>,
    fetched: Option<Result<String, String>>,
    baked: Result<Option<ClusterConfig>, String>,
    baked_path: &Path,
) -> (Option<ClusterConfig>, String, Vec<String>) {
    let mut problems = vec![];
    let baked_desc = format!("baked {}", baked_path.display());
    let baked = baked.unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    let (Some(url), Some(fetched)) = (url, fetched) else {
        let source = if baked.is_some() { baked_desc } else { "none (no configuration baked or given)".into() };
        return (baked, source, problems);
    };
    let err = match fetched.and_then(|text| parse_cluster(Path::new(url), &text).map_err(|e| e.to_string())) {
        Ok(c) => return (Some(c), format!("fetched from {url}"), problems),
        Err(e) => e,
    };
    problems.push(format!("{err}; using the {baked_desc} instead"));
    let source = if baked.is_some() { format!("{baked_desc} (fallback: {url} failed)") } else { "none".into() };
    (baked, source, problems)
}

/// Reads the baked configuration: absent is fine (Ok(None)), invalid is an error.
fn load_baked(file: &Path) -> Result<Option<ClusterConfig>, String> {
    if !file.exists() {
        return Ok(None);
    }
    config::read(file).and_then(|t| parse_cluster(file, &t)).map(Some).map_err(|e| e.to_string())
}

fn service_state(tx: &Sender<Event>, name: &str) -> Option<ServiceState> {
    ask_loop(tx, |r| Event::Boot(BootAsk::ServiceState(name.to_string(), r))).flatten()
}

/// Has the main loop add a service decided at boot.
fn add_service(tx: &Sender<Event>, spec: crate::config::ServiceSpec) -> Result<(), String> {
    ask_loop(tx, |r| Event::Boot(BootAsk::AddService(Box::new(spec), r)))
        .unwrap_or_else(|| Err("the main loop did not answer".into()))
}

/// Starts a service the image declares for the boot to start (`enabled = false`); an image
/// without it is fine.
fn start_deferred(tx: &Sender<Event>, name: &str) {
    match ask_loop(tx, |r| Event::Boot(BootAsk::StartService(name.to_string(), r))) {
        Some(Ok(())) => {}
        Some(Err(crate::supervisor::RequestError::UnknownService(_))) => {}
        Some(Err(e)) => warn!("cannot start {name}: {e}"),
        None => warn!("cannot start {name}: the main loop did not answer"),
    }
}

/// Waits until a one-shot service has finished (or cannot: failed, stopped), up to `limit`.
fn wait_oneshot(tx: &Sender<Event>, name: &str, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    loop {
        match service_state(tx, name) {
            None | Some(ServiceState::Exited) => return Ok(()),
            Some(ServiceState::Failed) | Some(ServiceState::Stopped) => return Err(format!("service {name} failed")),
            _ if Instant::now() >= end => return Err(format!("service {name} did not finish within {limit:?}")),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn bring_up_network(plan: &BootPlan, tx: &Sender<Event>, mgmt: &Management) -> Result<String, String> {
    let limit = crate::config::values::secs(plan.settings.network_timeout_s);
    let end = Instant::now() + limit;
    // The boot goes on once the drivers are loaded, while udevd may still be naming the NICs:
    // wait until it has named this one (its name is final; an interface that is up could not be
    // renamed).
    let iface = loop {
        let chosen = crate::net::choose_interface(&plan.class_net, mgmt)
            .and_then(|i| crate::net::udev_named(&plan.class_net, &plan.udev, &i).map(|()| i));
        match chosen {
            Ok(i) => break i,
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let spec = crate::net::address_service(&iface, mgmt);
    info!(interface = %iface, address = %mgmt.address, "bringing up the management network");
    add_service(tx, spec)?;
    loop {
        if let Some(a) = crate::net::ipv4_of(&iface).first() {
            return Ok(format!("{iface} {a}"));
        }
        if Instant::now() >= end {
            return Err(format!("no IPv4 address on {iface} after {:.0} s", limit.as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bring_up_peer_link(
    plan: &BootPlan,
    tx: &Sender<Event>,
    link: &crate::config::cluster::PeerLink,
) -> Result<(), String> {
    let iface = crate::net::iface_by_mac(&plan.class_net, &link.mac)
        .ok_or_else(|| format!("no NIC has the peer link's MAC {}", link.mac))?;
    info!(interface = %iface, address = %link.address, "bringing up the peer link");
    add_service(tx, crate::net::peer_link_service(&iface, &link.address))?;
    wait_oneshot(tx, "peer-link", Duration::from_secs(10))
}

/// Hands the storage watch's events to the main loop.
fn storage_sink(tx: &Sender<Event>) -> impl Fn(crate::storage::StorageEvent) + Send + 'static {
    let tx = tx.clone();
    move |e| {
        let _ = tx.send(Event::Storage(e));
    }
}

/// The boot sequence, as the README's boot table tells it. Never fails: every problem ends up
/// in the outcome's `problems`, and every phase in its `phases` with its duration.
pub fn run(plan: &BootPlan, tx: &Sender<Event>) -> BootOutcome {
    let mut out = BootOutcome::default();
    let baked_path = plan.etc.join("cluster.toml");
    let baked = load_baked(&baked_path);
    let named = plan.cmdline.node.as_deref();
    // NICs (whose MACs say who this blade is) exist once udev has replayed the kernel's events
    // for the devices it loads drivers for: the coldplug's first stage says so by exiting.
    // udevd goes on with the devices those drivers made (disks, NICs), which nothing here waits
    // for as a whole: the network waits for its NIC, storage for its paths.
    let macs = out.phase(tx, "udev", |_| {
        let limit = crate::config::values::secs(plan.settings.network_timeout_s);
        if let Err(e) = wait_oneshot(tx, "udev-trigger", limit) {
            warn!("{e}; looking for NICs anyway");
        }
        super::blade_macs(&plan.class_net)
    });
    // The HBAs come up (LIPs where ports are down, then every host scanned) while the network
    // and the configuration are fetched: none depends on the other. The LIP wait is the baked
    // configuration's (the shared one is not in yet).
    let hbas = plan.settings.storage.then(|| {
        let sys = crate::storage::sysfs::Sysfs::new(&plan.sys);
        let cfg = baked.as_ref().ok().and_then(|b| b.as_ref()).map(|c| c.storage.clone()).unwrap_or_default();
        let limit = crate::config::values::secs(cfg.lip_timeout_s);
        std::thread::Builder::new().name("hba".into()).spawn(move || bring_up_hbas(&sys, limit))
    });

    // 1. Management network, configured from the baked entry for this blade if there is one
    //    (the shared configuration may be behind the network).
    if plan.settings.network {
        out.phase(tx, "network", |out| {
            let mgmt = baked
                .as_ref()
                .ok()
                .and_then(|b| b.as_ref())
                .and_then(|b| find_node(b, named, &macs).ok())
                .map(|n| n.management.clone())
                .unwrap_or_default();
            match bring_up_network(plan, tx, &mgmt) {
                Ok(m) => {
                    info!(management = %m, "management network up");
                    out.management = Some(m);
                }
                Err(e) => {
                    error!("management network: {e}");
                    out.problems.push(format!("management network: {e}"));
                }
            }
        });
    }

    // 2. The shared configuration (over https:// with the fetch CA, when one is given).
    let cluster = out.phase(tx, "configuration", |out| {
        match trust_fetch_ca(plan.cmdline.fetch_ca.as_deref(), &plan.etc.join("fetch-ca.pem")) {
            Ok(Some(from)) => info!("https:// fetches are verified with the CA {from}"),
            Ok(None) => {}
            Err(e) => {
                error!("{e}");
                out.problems.push(e);
            }
        }
        let url = plan.cmdline.config_url.as_deref();
        let fetched = url.map(|u| {
            let limit = crate::config::values::secs(plan.settings.config_timeout_s);
            info!(url = %u, timeout_s = limit.as_secs_f64(), "fetching the cluster configuration");
            get_with_retries(u, limit, Duration::from_secs(1), crate::config::fetch::MAX_CONFIG_BYTES, |n, e| {
                warn!(attempt = n, "cannot fetch configuration yet: {e}")
            })
            .map_err(|(e, tries)| {
                format!("cannot fetch {u} after {tries} tries within {:.0} s: {e}", limit.as_secs_f64())
            })
        });
        if let Some(Ok(text)) = &fetched {
            if let Err(e) = config::write_private(&plan.run.join("cluster.toml"), text) {
                warn!("cannot keep a copy of the fetched configuration: {e}");
            }
        }
        let (cluster, source, problems) = choose_config(url, fetched, baked, &baked_path);
        for p in &problems {
            error!("configuration: {p}");
        }
        out.problems.extend(problems);
        info!("configuration: using {source}");
        out.config_source = source;
        cluster
    });

    // 2b. The clock, from the cluster's NTP servers: certificates are checked against it.
    if let Some(servers) = cluster.as_ref().and_then(|c| c.time.servers().ok()).filter(|s| !s.is_empty()) {
        out.phase(tx, "clock", |out| match crate::net::sntp::sync(&servers, crate::net::sntp::step_clock) {
            Ok(said) => {
                info!("clock {said}");
                out.clock = Some(said);
            }
            Err(e) => {
                warn!("clock: {e}");
                out.problems.push(format!("clock: {e}"));
                out.clock = Some(format!("not synchronised: {e}"));
            }
        });
    }

    // 3. Who this blade is, and the peer link the other blades' supervisors and migration
    //    streams use.
    out.phase(tx, "identity", |out| {
        // The MACs again: a NIC that appeared after the coldplug's first stage (a driver slow to
        // make it, one the settle did not wait for) counts too; the management network is up
        // on one by now.
        let macs = super::blade_macs(&plan.class_net);
        out.node = match &cluster {
            Some(c) => match find_node(c, named, &macs) {
                Ok(n) => n.name.clone(),
                Err(e) => {
                    error!("identity: {e}");
                    out.problems.push(format!("identity: {e}"));
                    named.unwrap_or("bladevisor").to_string()
                }
            },
            None => named.unwrap_or("bladevisor").to_string(),
        };
        if let Some(link) = cluster.as_ref().and_then(|c| c.nodes.get(&out.node)).and_then(|n| n.peer_link.clone()) {
            if let Err(e) = bring_up_peer_link(plan, tx, &link) {
                error!("peer link: {e}");
                out.problems.push(format!("peer link: {e}"));
            }
        }
    });
    // 3b. The credentials: operators' token hashes from the configuration; the peer token and
    //     this blade's certificate from its credentials file, fetched now (never baked into the
    //     image).
    out.phase(tx, "credentials", |out| credentials(plan, cluster.as_ref(), out));
    // The TLS port opens now, not after storage: operators can ask (and be told the blade is
    // still booting) during a long storage wait.
    if let Some(tls) = &out.tls {
        let _ = tx.send(Event::Boot(BootAsk::Credentials(out.keys.clone(), tls.clone())));
    }
    // 4. Storage: HBAs, scans, multipath from the alias table, and the wait for every alias.
    if plan.settings.storage {
        out.phase(tx, "storage", |out| bring_up_storage(plan, tx, cluster.as_ref(), hbas, out));
    }
    // The coldplug's second stage (ttys, memory blocks, ...: nothing above waits for them) only
    // now, so that its events did not queue in front of the disks' and the multipath maps'.
    start_deferred(tx, "udev-coldplug");
    // Guests start once udevd has handled the device nodes they open (their modes and groups
    // come from udev rules), not once the whole coldplug is done: its second stage goes on after
    // ready. The modules service loads tun first.
    let waited = Instant::now();
    let limit = crate::config::values::secs(plan.settings.network_timeout_s);
    let handled = wait_oneshot(tx, "modules", limit).map_err(|e| format!("{e} (it loads tun)")).and_then(|()| {
        let end = Instant::now() + limit;
        loop {
            match guest_devices_pending(&plan.sys, &plan.udev) {
                pending if pending.is_empty() => return Ok(()),
                pending if Instant::now() >= end => {
                    return Err(format!("udevd has not handled {} within {limit:?}", pending.join(", ")))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    match handled {
        Ok(()) if waited.elapsed() >= Duration::from_millis(100) => {
            info!(ms = waited.elapsed().as_millis() as u64, "waited for udevd to handle the guests' device nodes")
        }
        Ok(()) => {}
        Err(e) => {
            error!("guests' devices: {e}");
            out.problems.push(format!("guests' devices: {e}: guests may not open them"));
        }
    }
    if service_state(tx, "udev-trigger") == Some(ServiceState::Failed) {
        out.problems.push(
            "udev coldplug: service udev-trigger failed: devices present at boot may lack their udev rules".into(),
        );
    }
    out.cluster = cluster;
    out
}

/// The device nodes a guest's QEMU opens, by their name in `/sys/class/misc`.
const GUEST_DEVICES: [&str; 3] = ["kvm", "tun", "vhost-net"];

/// Those of the guests' device nodes present whose "add" event udevd has not handled yet. Where
/// no udevd runs, none.
fn guest_devices_pending(sys: &Path, udev: &Path) -> Vec<String> {
    GUEST_DEVICES
        .iter()
        .filter(|name| {
            std::fs::read_to_string(sys.join("class/misc").join(name).join("dev"))
                .is_ok_and(|dev| !crate::net::udev_has_handled(udev, &format!("c{}", dev.trim())))
        })
        .map(|name| format!("/dev/{name}"))
        .collect()
}

/// Trusts the fetch CA for `https://` fetches: the kernel command line's (base64 DER), else the
/// image's file. Says where it came from; an invalid one is an error naming it (and
/// `https://` fetches then fail, saying there is no CA).
fn trust_fetch_ca(cmdline: Option<&str>, image_file: &Path) -> Result<Option<String>, String> {
    let (what, pem) = match cmdline {
        Some(b64) => ("bladevisor.fetch-ca=".to_string(), crate::tls::pem_of_base64(b64)),
        None => match std::fs::read_to_string(image_file) {
            Ok(pem) => (image_file.display().to_string(), pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", image_file.display())),
        },
    };
    crate::tls::set_fetch_trust(&what, &pem).map(|_| Some(what))
}

/// Fetches this blade's credentials file (`{node}` in its URL is the blade's name) and sets the
/// keys and TLS. A blade without them serves only the status and the metrics, and says why in
/// its status; operators' tokens alone (the configuration's) do not open the TLS port: it
/// needs the blade's certificate.
fn credentials(plan: &BootPlan, cluster: Option<&ClusterConfig>, out: &mut BootOutcome) {
    use crate::config::credentials::{parse_credentials, MAX_CREDENTIALS_BYTES};
    let Some(c) = cluster else {
        out.credentials = "none: no cluster configuration".into();
        return;
    };
    out.keys.operators = c.operator_keys.clone();
    if let Some(t) = &c.cluster.token {
        out.keys.operators.push(("cluster-token".into(), crate::config::credentials::sha256(t)));
    }
    let Some(url) = plan.cmdline.credentials_url.clone().or(c.cluster.credentials_url.clone()) else {
        out.credentials = "none: no bladevisor.credentials= and no [cluster] credentials-url".into();
        warn!("no credentials: the API serves only the status and the metrics");
        return;
    };
    let u = url.replace("{node}", &out.node);
    let limit = crate::config::values::secs(plan.settings.config_timeout_s);
    let fetched = get_with_retries(&u, limit, Duration::from_secs(1), MAX_CREDENTIALS_BYTES, |n, e| {
        warn!(attempt = n, "cannot fetch the credentials yet: {e}")
    });
    let node = out.node.clone();
    match fetched
        .map_err(|(e, tries)| format!("cannot fetch {u} after {tries} tries: {e}"))
        .and_then(|t| parse_credentials(&u, &t))
        .and_then(|cred| cred.tls(&u, &node).map(|tls| (cred, tls)))
    {
        Ok((cred, tls)) => {
            out.keys.peer = Some(cred.peer_token);
            out.tls = Some(std::sync::Arc::new(tls));
            out.credentials = format!("fetched from {u}");
        }
        Err(e) => {
            let why = format!("credentials: {e}: the API serves only the status and the metrics");
            error!("{why}");
            out.problems.push(why);
            out.credentials = format!("none: {e}");
        }
    }
}

/// The HBAs brought up and every SCSI host scanned, polling a port that is not Online yet
/// every half second.
fn bring_up_hbas(sys: &crate::storage::sysfs::Sysfs, lip_limit: Duration) -> crate::storage::hba::BringUp {
    let t0 = Instant::now();
    let b = crate::storage::hba::bring_up(sys, lip_limit, || std::thread::sleep(Duration::from_millis(500)));
    info!(ms = t0.elapsed().as_millis() as u64, "HBAs up and SCSI hosts scanned");
    b
}

fn multipathd_service() -> crate::config::ServiceSpec {
    let argv = vec!["/sbin/multipathd".into(), "-d".into(), "-s".into()];
    crate::config::ServiceSpec {
        after: vec!["udevd".into()],
        backoff: crate::config::services::Backoff { give_up_after: 0, ..Default::default() },
        // Its mlockall guards a root on multipath; the blade's root is in RAM.
        no_memory_lock: true,
        ..crate::config::ServiceSpec::new("multipathd", argv, crate::config::RestartPolicy::Always)
    }
}

fn bring_up_storage(
    plan: &BootPlan,
    tx: &Sender<Event>,
    cluster: Option<&ClusterConfig>,
    hbas: Option<std::io::Result<std::thread::JoinHandle<crate::storage::hba::BringUp>>>,
    out: &mut BootOutcome,
) {
    use crate::storage::{self, hba, sysfs::Sysfs, AliasSources, LunState};
    let cfg = cluster.map(|c| c.storage.clone()).unwrap_or_default();
    let sources = AliasSources {
        url: plan.cmdline.aliases_url.clone().or(cfg.aliases_url.clone()),
        inline: cluster.and_then(|c| c.aliases.clone()),
        baked: plan.etc.join("aliases"),
        fetch_timeout: crate::config::values::secs(plan.settings.config_timeout_s),
    };
    {
        let mut s = crate::storage::lock(&plan.storage);
        s.sources = sources.clone();
        s.default_paths = cfg.default_paths;
        s.multipath_conf = plan.multipath_conf.clone();
        s.dev_mapper = Some(PathBuf::from("/dev/mapper"));
    }
    let (table, source, problems) = storage::resolve(&sources);
    for p in problems {
        error!("aliases: {p}");
        out.problems.push(format!("aliases: {p}"));
    }
    let sys = Sysfs::new(&plan.sys);
    let scanner = storage::rescan::Scanner::new(sys.clone());
    {
        let mut s = crate::storage::lock(&plan.storage);
        s.sys = Some(sys.clone());
        s.scanner = Some(scanner.clone());
        s.map_wait = storage::reload::MAP_WAIT;
    }
    // The bring-up started after udev, or (if its thread could not start) now.
    let b = match hbas {
        Some(Ok(h)) => h.join().unwrap_or_else(|p| hba::BringUp {
            problems: vec![format!("HBA bring-up failed: {}", crate::panic_message(&p))],
            ..Default::default()
        }),
        _ => bring_up_hbas(&sys, crate::config::values::secs(cfg.lip_timeout_s)),
    };
    out.problems.extend(b.problems);
    let Some(table) = table else {
        info!("no alias table: no LUN is multipathed");
        storage::watch(plan.storage.clone(), sys, storage_sink(tx));
        return;
    };
    // While the blade runs: the kernel's unit attentions, and the served file's refresh.
    storage::uevent::listen(scanner);
    match (cfg.aliases_refresh_s, &sources.url) {
        (Some(every), Some(url)) => {
            info!(url = %url, every_s = every, "the alias file is refreshed every {every} s");
            storage::refresh::run(plan.storage.clone(), url.clone(), Duration::from_secs(every.into()));
        }
        (Some(_), None) => warn!("[storage] aliases-refresh-s is set but no alias file is served: nothing to refresh"),
        _ => {}
    }
    let names: Vec<String> = table.iter().map(|a| a.alias.clone()).collect();
    if let Err(e) = storage::apply(&plan.storage, table, vec![], source) {
        error!("{e}");
        out.problems.push(e);
        return;
    }
    if let Err(e) = add_service(tx, multipathd_service()) {
        error!("cannot start multipathd: {e}");
        out.problems.push(format!("cannot start multipathd: {e}"));
    }
    crate::storage::lock(&plan.storage).settling = true;
    storage::watch(plan.storage.clone(), sys, storage_sink(tx));
    // Wait, with a deadline, until every alias has its expected paths.
    let limit = crate::config::values::secs(cfg.wait_s);
    let end = Instant::now() + limit;
    loop {
        // Read where the watch keeps it (it refreshes every 100 ms while the boot waits); copied
        // only for the report at the deadline.
        let all = {
            let s = crate::storage::lock(&plan.storage);
            s.luns.len() == names.len() && s.luns.iter().all(|l| l.state == LunState::Healthy)
        };
        if all {
            info!(luns = names.len(), "storage ready: every alias has its expected paths");
            storage::settled(&plan.storage);
            return;
        }
        if Instant::now() >= end {
            let luns = crate::storage::lock(&plan.storage).luns.clone();
            let missing: Vec<&str> =
                luns.iter().filter(|l| l.state == LunState::Missing).map(|l| l.alias.as_str()).collect();
            let degraded: Vec<&str> =
                luns.iter().filter(|l| l.state == LunState::Degraded).map(|l| l.alias.as_str()).collect();
            warn!(
                "storage not complete after {:.0} s: missing [{}], degraded [{}]; going on",
                limit.as_secs_f64(),
                missing.join(", "),
                degraded.join(", ")
            );
            storage::settled(&plan.storage);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[cluster]\nname = \"prod\"\n[nodes.b1]\nmacs = [\"52:54:00:00:00:01\"]\n";

    fn baked() -> Result<Option<ClusterConfig>, String> {
        Ok(Some(parse_cluster(Path::new("baked.toml"), "[cluster]\nname = \"lab\"\n").unwrap()))
    }

    #[test]
    fn guests_wait_only_for_their_device_nodes_that_udevd_has_not_handled() {
        let (sys, udev) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (name, dev) in [("tun", "10:200"), ("kvm", "10:232"), ("fuse", "10:229")] {
            std::fs::create_dir_all(sys.path().join("class/misc").join(name)).unwrap();
            std::fs::write(sys.path().join("class/misc").join(name).join("dev"), format!("{dev}\n")).unwrap();
        }
        assert!(guest_devices_pending(sys.path(), udev.path()).is_empty(), "no udevd: nothing to wait for");
        std::fs::write(udev.path().join("control"), "").unwrap();
        // vhost-net is absent (its module not loaded): not waited for; fuse is not a guest's.
        assert_eq!(guest_devices_pending(sys.path(), udev.path()), ["/dev/kvm", "/dev/tun"]);
        std::fs::create_dir(udev.path().join("data")).unwrap();
        std::fs::write(udev.path().join("data/c10:200"), "").unwrap();
        assert_eq!(guest_devices_pending(sys.path(), udev.path()), ["/dev/kvm"]);
        // An entry a later udevd marks as still being handled is not handled yet.
        std::fs::write(udev.path().join("data/c10:232"), "I:123\nE:ID_PROCESSING=1\n").unwrap();
        assert_eq!(guest_devices_pending(sys.path(), udev.path()), ["/dev/kvm"]);
        std::fs::write(udev.path().join("data/c10:232"), "I:123\n").unwrap();
        assert!(guest_devices_pending(sys.path(), udev.path()).is_empty());
    }

    #[test]
    fn without_a_url_the_baked_configuration_is_used() {
        let (c, src, problems) = choose_config(None, None, baked(), Path::new("/etc/bladevisor/cluster.toml"));
        assert_eq!(c.unwrap().cluster.name, "lab");
        assert_eq!(src, "baked /etc/bladevisor/cluster.toml");
        assert!(problems.is_empty());
    }

    #[test]
    fn a_fetched_configuration_wins() {
        let (c, src, problems) = choose_config(Some("http://h/c.toml"), Some(Ok(GOOD.into())), baked(), Path::new("b"));
        assert_eq!(c.unwrap().cluster.name, "prod");
        assert_eq!(src, "fetched from http://h/c.toml");
        assert!(problems.is_empty());
    }

    #[test]
    fn an_unreachable_url_falls_back_to_the_baked_copy_and_says_so() {
        let fetched = Some(Err("cannot fetch http://h/c.toml after 30 tries: connection refused".to_string()));
        let (c, src, problems) = choose_config(Some("http://h/c.toml"), fetched, baked(), Path::new("/etc/b.toml"));
        assert_eq!(c.unwrap().cluster.name, "lab");
        assert_eq!(src, "baked /etc/b.toml (fallback: http://h/c.toml failed)");
        assert_eq!(
            problems,
            vec![
                "cannot fetch http://h/c.toml after 30 tries: connection refused; using the baked /etc/b.toml instead"
            ]
        );
    }

    #[test]
    fn an_invalid_fetched_file_falls_back_naming_the_url_and_line() {
        let fetched = Some(Ok("[cluster]\nnme = \"x\"\n".to_string()));
        let (c, _, problems) = choose_config(Some("http://h/c.toml"), fetched, baked(), Path::new("b"));
        assert_eq!(c.unwrap().cluster.name, "lab");
        assert!(problems[0].starts_with("http://h/c.toml:2:1: unknown field `nme`"), "{problems:?}");
    }

    #[test]
    fn an_invalid_baked_file_is_reported() {
        let (c, src, problems) = choose_config(None, None, Err("b.toml:1: bad".into()), Path::new("b.toml"));
        assert!(c.is_none());
        assert!(src.starts_with("none"));
        assert_eq!(problems, vec!["b.toml:1: bad"]);
    }
}
