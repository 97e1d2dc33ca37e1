//! The edge of the guest coordinator: requests from the API and reports from workers go in,
//! the coordinator decides, and its effects are carried out here against the supervisor, the
//! peers (on workers, so the loop never waits on the network) and QMP. The coordinator itself
//! touches nothing; this is the only place its decisions meet the blade.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::workers::{ask_about, cannot_start, qmp_path, qmp_wait, resolve_in_doubt, ProcessLease};
use super::{BootAsk, Event, Init};
use crate::api::peer::HttpPeer;
use crate::coord::owner;
use crate::coord::{service_name, Blade, Effect, Report, ServiceKind, Ticket};
use crate::migration::{self as mig, Outcome, Phase, Progress};
use crate::proto::request::{Answer, ConsoleText, Operator, QmpReturn, Read, Refusal, Reply, Request};
use crate::proto::{Memory, ServiceAction};
use crate::qemu::qmp::Qmp;
use crate::storage::LunState;
use crate::supervisor::{RequestError, ServiceStatus, Supervisor};

/// Replies not given within this long are dropped (their caller gave up long before).
const TICKET_LIFETIME: Duration = Duration::from_secs(120);

/// What the coordinator's effects need at the edge.
#[derive(Default)]
pub struct Edge {
    replies: BTreeMap<Ticket, (Instant, Sender<Reply>)>,
    next_ticket: Ticket,
    /// Outgoing migrations' cancel flags, by migration id.
    cancels: BTreeMap<u64, Arc<AtomicBool>>,
    /// Guests whose console is followed.
    followed: BTreeSet<String>,
    /// The lease area, when the cluster has one.
    pub(super) area: Option<crate::leases::Area>,
    consoles: crate::qemu::console::Consoles,
}

impl Edge {
    pub(super) fn ticket(&mut self, reply: Sender<Reply>) -> Ticket {
        let now = Instant::now();
        self.replies.retain(|_, (t, _)| now.saturating_duration_since(*t) < TICKET_LIFETIME);
        self.next_ticket += 1;
        self.replies.insert(self.next_ticket, (now, reply));
        self.next_ticket
    }

    fn answer(&mut self, ticket: Ticket, reply: Reply) {
        if let Some((_, tx)) = self.replies.remove(&ticket) {
            let _ = tx.send(reply);
        }
    }

    /// A reply channel a worker answers on directly.
    fn take(&mut self, ticket: Ticket) -> Option<Sender<Reply>> {
        self.replies.remove(&ticket).map(|(_, tx)| tx)
    }
}

/// What the coordinator reads of this blade: the supervisor's services, the storage watch's
/// LUNs, memory (read once per decision).
pub struct Facts<'a> {
    sup: &'a Supervisor,
    storage: &'a crate::storage::Shared,
    memory: OnceLock<Memory>,
}

pub fn facts<'a>(sup: &'a Supervisor, storage: &'a crate::storage::Shared) -> Facts<'a> {
    Facts { sup, storage, memory: OnceLock::new() }
}

impl Blade for Facts<'_> {
    fn service(&self, guest: &str) -> Option<ServiceStatus> {
        self.sup.service_status(&service_name(guest), Instant::now())
    }
    fn lun(&self, alias: &str) -> Option<LunState> {
        crate::storage::lock(self.storage).luns.iter().find(|l| l.alias == alias).map(|l| l.state)
    }
    fn memory(&self) -> Memory {
        self.memory.get_or_init(super::memory).clone()
    }
    fn qemu_lacks(&self, machine: &str, cpu: &str) -> Option<String> {
        crate::qemu::offer::known()?.lacks(machine, cpu)
    }
    fn release(&self) -> String {
        crate::image_version()
    }
}

impl Init {
    pub(super) fn facts(&self) -> Facts<'_> {
        facts(&self.sup, &self.storage)
    }

    /// A request from the API.
    pub(super) fn call(&mut self, req: Request, reply: Sender<Reply>) {
        let now = Instant::now();
        let answer = match req {
            Request::Read(Read::Status | Read::Metrics) => Ok(Answer::Status(Box::new(self.status()))),
            Request::Read(Read::Guest(name)) => match &self.coord {
                Some(c) => Ok(Answer::Guest(c.guest_here(&name, &facts(&self.sup, &self.storage)))),
                None => Err(Refusal::unavailable("the blade is still booting")),
            },
            Request::Read(Read::Capacity) => match &self.coord {
                Some(c) => Ok(Answer::Capacity(c.capacity(&facts(&self.sup, &self.storage)))),
                None => Err(Refusal::unavailable("the blade is still booting")),
            },
            Request::Operator(Operator::Power(action)) => {
                self.begin_shutdown(action, "requested over the control API");
                Ok(Answer::done(format!("{} in progress", action.as_str())))
            }
            Request::Operator(Operator::Service { name, action }) => self.service_action(&name, action),
            Request::Operator(Operator::Upgrade { base_url, undrain, stop_guests }) => {
                self.start_upgrade(&base_url, undrain, stop_guests)
            }
            Request::Operator(Operator::Console { name, offset }) => self.console(&name, offset),
            Request::Operator(Operator::StorageReload { all: false }) => {
                self.reload_storage(move |r| {
                    let _ = reply.send(r.map(|r| Answer::Reloaded(Box::new(r))).map_err(Refusal::failed));
                });
                return;
            }
            Request::Operator(Operator::StorageReload { all: true }) => {
                let nodes: Vec<String> = self
                    .boot
                    .as_ref()
                    .and_then(|b| b.cluster.as_ref())
                    .map(|c| c.nodes.keys().filter(|n| **n != self.node).cloned().collect())
                    .unwrap_or_default();
                let (me, peers, shared) = (self.node.clone(), self.peers_named(nodes), self.storage.clone());
                crate::spawn_worker("storage-reload-all", move || {
                    let all = super::storage::reload_everywhere(me, || crate::storage::reload(&shared), peers);
                    let _ = reply.send(Ok(Answer::ReloadedAll(all)));
                });
                return;
            }
            Request::Operator(Operator::StorageRescan) => {
                let scanner = crate::storage::lock(&self.storage).scanner.clone();
                let Some(scanner) = scanner else {
                    let _ = reply.send(Err(Refusal::unavailable("storage is not up yet")));
                    return;
                };
                crate::spawn_worker("storage-rescan", move || {
                    let scan = scanner.all(crate::storage::reload::SCAN_DEADLINE);
                    let ok = scan.summary();
                    let _ = reply.send(Ok(Answer::Rescanned(crate::proto::request::Rescanned { ok, scan })));
                });
                return;
            }
            Request::Operator(Operator::ConsoleInput { name, session, who, data }) => {
                self.console_input(&name, &session, Some((&who, &data)))
            }
            Request::Operator(Operator::ConsoleDetach { name, session }) => self.console_input(&name, &session, None),
            Request::Operator(Operator::ReadLun { .. } | Operator::Logs { .. }) => {
                Err(Refusal::invalid("LUN reads and logs are served by the API"))
            }
            Request::Operator(Operator::LeasesInit { force }) => {
                let Some(area) = self.edge.area.clone() else {
                    let _ = reply.send(Err(Refusal::conflict("this cluster has no [ha] lease area")));
                    return;
                };
                let cluster = self.boot.as_ref().and_then(|b| b.cluster.as_ref());
                let guests: Vec<String> = cluster.map(|c| c.guests.keys().cloned().collect()).unwrap_or_default();
                crate::spawn_worker("leases-init", move || {
                    let r = super::leasekeeper::init(&area, &guests, force).map(Answer::Done).map_err(|(exists, e)| {
                        if exists {
                            Refusal::conflict(e)
                        } else {
                            Refusal::failed(e)
                        }
                    });
                    let _ = reply.send(r);
                });
                return;
            }
            Request::Operator(Operator::ClusterGuests) => {
                let Some(cluster) = self.boot.as_ref().and_then(|b| b.cluster.clone()) else {
                    let _ = reply.send(Err(Refusal::unavailable("no cluster configuration yet")));
                    return;
                };
                let others: Vec<String> = cluster.nodes.keys().filter(|n| **n != self.node).cloned().collect();
                let (me, here, peers) = (self.node.clone(), self.status().guests, self.peers_named(others));
                crate::spawn_worker("cluster-guests", move || {
                    let view = super::workers::cluster_guests(me, here, peers, &cluster.guests);
                    let _ = reply.send(Ok(Answer::ClusterGuests(view)));
                });
                return;
            }
            req @ (Request::Operator(_) | Request::Peer(_)) => {
                let ticket = self.edge.ticket(reply);
                match &mut self.coord {
                    Some(c) => c.request(req, ticket, &facts(&self.sup, &self.storage), now),
                    None => self.edge.answer(ticket, Err(Refusal::unavailable("the blade is still booting"))),
                }
                return self.run_effects();
            }
        };
        let _ = reply.send(answer);
    }

    pub(super) fn boot_ask(&mut self, ask: BootAsk) {
        match ask {
            BootAsk::AddService(spec, reply) => {
                let _ = reply.send(self.sup.add(*spec, Instant::now()));
            }
            BootAsk::ServiceState(name, reply) => {
                let _ = reply.send(self.sup.state(&name));
            }
            BootAsk::StartService(name, reply) => {
                let _ = reply.send(self.sup.start_for_boot(&name, Instant::now()));
            }
            BootAsk::Phase(super::BootProgress::Started(name)) => {
                self.boot_progress.1 = Some((name, std::time::Instant::now()));
            }
            BootAsk::Phase(super::BootProgress::Done(phase)) => {
                self.boot_progress.1 = None;
                self.boot_progress.0.push(phase);
            }
            BootAsk::Credentials(keys, tls) => self.open_tls_api(keys, &tls),
            BootAsk::Done(outcome) => self.boot_done(*outcome),
        }
    }

    pub(super) fn report(&mut self, r: Report) {
        if let Report::MigrationDone { id, .. } = &r {
            self.edge.cancels.remove(id);
        }
        if let Some(c) = &mut self.coord {
            c.report(r, &facts(&self.sup, &self.storage), Instant::now());
        }
        self.run_effects();
    }

    /// One pass of the loop: arrivals and placement brought up to date.
    pub(super) fn tick_guests(&mut self) {
        if let Some(c) = &mut self.coord {
            c.tick(&facts(&self.sup, &self.storage), Instant::now());
        }
        self.run_effects();
    }

    /// An operator's action on a service (a guest's included): the supervisor's answer.
    fn service_action(&mut self, name: &str, action: ServiceAction) -> Reply {
        let now = Instant::now();
        let r = match action {
            ServiceAction::Start => self.sup.request_start(name, now),
            ServiceAction::Stop => self.sup.request_stop(name, &mut self.rt, now),
            ServiceAction::Restart => self.sup.request_restart(name, &mut self.rt, now),
            ServiceAction::Kill => self.sup.request_kill(name, &mut self.rt),
        };
        match r {
            Ok(()) => Ok(Answer::done(format!("{name}: {} requested", action.as_str()))),
            Err(e @ RequestError::UnknownService(_)) => Err(Refusal::not_found(e.to_string())),
            Err(e) => Err(Refusal::conflict(e.to_string())),
        }
    }

    fn console(&self, name: &str, offset: u64) -> Reply {
        let consoles = self.edge.consoles.lock().unwrap_or_else(|p| p.into_inner());
        match consoles.get(name) {
            Some(c) => {
                let (data, next) = c.ring.read_from(offset);
                let text = String::from_utf8_lossy(&data).into_owned();
                Ok(Answer::Console(ConsoleText { guest: name.to_string(), next, text }))
            }
            None => Err(Refusal::not_found(format!("no console for guest {name:?} on this blade"))),
        }
    }

    /// Types on a guest's console as `session` (`input`: who and what), or detaches it.
    fn console_input(&self, name: &str, session: &str, input: Option<(&str, &[u8])>) -> Reply {
        let valid =
            (1..=64).contains(&session.len()) && session.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(Refusal::invalid("session must be 1-64 letters, digits and '-'"));
        }
        let mut consoles = self.edge.consoles.lock().unwrap_or_else(|p| p.into_inner());
        let c = consoles
            .get_mut(name)
            .ok_or_else(|| Refusal::not_found(format!("no console for guest {name:?} on this blade")))?;
        match input {
            Some((who, data)) => c
                .write(session, who, data, Instant::now())
                .map(|_| Answer::done(format!("{} bytes typed", data.len())))
                .map_err(Refusal::conflict),
            None => {
                c.detach(session);
                Ok(Answer::done("detached"))
            }
        }
    }

    /// Carries out the coordinator's effects, and those they lead to, until none is left.
    pub(super) fn run_effects(&mut self) {
        loop {
            let effects = self.coord.as_mut().map(|c| c.take_effects()).unwrap_or_default();
            if effects.is_empty() {
                return;
            }
            for e in effects {
                self.execute(e);
            }
        }
    }

    /// The TLS of a migration stream of `guest` to or from blade `peer`: this blade's
    /// credentials written where the guest's QEMU (and only it) reads them. No credentials, no
    /// stream: guest memory does not cross the network in clear.
    fn stream_tls(&self, guest: &str, peer: &str) -> Result<mig::tls::StreamTls, String> {
        let tls = self.boot.as_ref().and_then(|b| b.tls.clone());
        let tls = tls.ok_or("this blade has no credentials: no migration stream without TLS")?;
        let dir = crate::qemu::run_dir(&crate::run_dir(), guest).join("tls");
        mig::tls::write_dir(&dir, crate::qemu::guest_id(guest), &tls.pem)
            .map_err(|e| format!("cannot give the guest's QEMU its migration credentials: {e}"))?;
        Ok(mig::tls::StreamTls { dir, peer: peer.to_string() })
    }

    fn peer(&self, node: &str) -> Result<HttpPeer, String> {
        let boot = self.boot.as_ref().ok_or("the blade is still booting")?;
        let c = boot.cluster.as_ref().ok_or("no cluster configuration")?;
        let tls = boot.tls.clone().ok_or("this blade has no credentials: it cannot call other blades")?;
        HttpPeer::of(c, &self.node, node, self.api_tls_port.unwrap_or(7443), boot.keys.peer.clone(), tls)
    }

    /// A guest's lease as its process here holds it.
    fn lease_of(&self, guest: &str) -> ProcessLease {
        let pid = self.sup.service_status(&service_name(guest), Instant::now()).and_then(|s| s.pid);
        ProcessLease { area: self.edge.area.clone(), guest: guest.to_string(), pid }
    }

    /// These blades as peers, or why each cannot be.
    fn peers_named(&self, nodes: Vec<String>) -> Vec<(String, Result<HttpPeer, String>)> {
        nodes.into_iter().map(|n| (n.clone(), self.peer(&n))).collect()
    }

    /// Every other blade of the cluster that can be reached.
    fn all_peers(&self) -> Vec<HttpPeer> {
        let Some(c) = self.boot.as_ref().and_then(|b| b.cluster.as_ref()) else { return vec![] };
        c.nodes.keys().filter(|n| **n != self.node).filter_map(|n| self.peer(n).ok()).collect()
    }

    /// The service that runs a guest here, as `kind` starts it.
    fn guest_spec(&self, guest: &str, kind: ServiceKind) -> Result<crate::config::ServiceSpec, String> {
        let spec = self.coord.as_ref().and_then(|c| c.guest_specs().find(|g| g.name == guest).cloned());
        let g = spec.ok_or_else(|| format!("no guest named {guest}"))?;
        let run = crate::run_dir();
        let mut spec = match kind {
            ServiceKind::Incoming => crate::qemu::incoming_service(&g, &run, self.kvm),
            ServiceKind::Defined | ServiceKind::Start => crate::qemu::service(&g, &run, self.kvm),
        };
        if kind == ServiceKind::Start {
            spec.enabled = true;
        }
        if let Some(area) = &self.edge.area {
            let exe = std::env::current_exe().map(|p| p.display().to_string());
            let exe = exe.unwrap_or_else(|_| "/usr/sbin/bladevisor".into());
            spec = crate::leases::leased(spec, area, guest, kind == ServiceKind::Incoming, &exe);
        }
        // Guests stop before the storage under them.
        if self.sup.state("multipathd").is_some() {
            spec.after.push("multipathd".into());
        }
        Ok(spec)
    }

    fn add_guest_service(&mut self, guest: &str, kind: ServiceKind) -> Result<(), String> {
        let spec = self.guest_spec(guest, kind)?;
        self.sup.add(spec, Instant::now())?;
        let run = crate::run_dir();
        if self.edge.followed.insert(guest.to_string()) {
            let sock = crate::qemu::run_dir(&run, guest).join("console.sock");
            crate::qemu::console::follow(self.edge.consoles.clone(), guest.to_string(), sock);
        }
        Ok(())
    }

    fn execute(&mut self, e: Effect) {
        let now = Instant::now();
        let tx = self.tx.clone();
        let report = move |r: Report| {
            let _ = tx.send(Event::Report(r));
        };
        match e {
            Effect::Reply(t, r) => self.edge.answer(t, r),
            Effect::AddService { guest, kind } => {
                if let Err(why) = self.add_guest_service(&guest, kind) {
                    report(Report::ServiceRefused { guest, why });
                }
            }
            Effect::Service { guest, action, ticket } => {
                let r = self.service_action(&service_name(&guest), action);
                if let Some(t) = ticket {
                    self.edge.answer(t, r);
                }
            }
            Effect::Discard(guest) => self.sup.discard(&service_name(&guest), &mut self.rt, now),
            Effect::Adopt(guest) => match self.guest_spec(&guest, ServiceKind::Start) {
                Ok(spec) => self.sup.replace_spec(&service_name(&guest), spec),
                Err(e) => warn!(guest = %guest, "cannot adopt: {e}"),
            },
            Effect::AskOwners { guest, peers, force, ticket } => {
                let (peers, me) = (self.peers_named(peers), self.node.clone());
                crate::spawn_worker(&format!("owner-{guest}"), move || {
                    let verdict = owner::decide(&me, &ask_about(&guest, peers));
                    report(Report::OwnersAnswered { guest, verdict, force, ticket });
                });
            }
            Effect::MigrateOut { guest, to, migration, bandwidth_mbps } => {
                self.migrate_out(guest, to, migration, bandwidth_mbps, report)
            }
            Effect::CancelMigration(id) => {
                if let Some(c) = self.edge.cancels.get(&id) {
                    c.store(true, Ordering::SeqCst);
                }
            }
            Effect::Listen { guest, from, caps, ports, taken, ticket } => {
                let tls = self.stream_tls(&guest, &from);
                crate::spawn_worker(&format!("incoming-{guest}"), move || {
                    let result = tls.and_then(|tls| {
                        qmp_wait(&qmp_path(&guest), Duration::from_secs(20))
                            .and_then(|mut vm| mig::dest::listen(&mut vm, &caps, ports.0..=ports.1, &taken, Some(&tls)))
                    });
                    report(Report::Listening { guest, result, ticket });
                });
            }
            Effect::Resume { guest, ticket } => {
                let mut lease = self.lease_of(&guest);
                crate::spawn_worker(&format!("resume-{guest}"), move || {
                    let result = qmp_wait(&qmp_path(&guest), Duration::from_secs(5))
                        .and_then(|mut vm| mig::dest::resume(&mut vm, &mut lease));
                    report(Report::Resumed { guest, result, ticket });
                });
            }
            Effect::Resolve { guest, to, peers, ticket } => {
                let (peers, me, lease) = (self.peers_named(peers), self.node.clone(), self.lease_of(&guest));
                crate::spawn_worker(&format!("resolve-{guest}"), move || {
                    let result = resolve_in_doubt(&me, &guest, &to, peers, lease);
                    report(Report::Resolved { guest, result, ticket });
                });
            }
            Effect::TellDrained(drained) => {
                let (peers, me) = (self.all_peers(), self.node.clone());
                crate::spawn_worker("drain-notice", move || {
                    for p in peers {
                        if let Err(e) = p.call(crate::proto::request::Peer::Drained { node: me.clone(), drained }) {
                            warn!(peer = %p.node, "could not tell it this blade is drained={drained}: {e}");
                        }
                    }
                });
            }
            Effect::AskDrain => {
                let (peers, me) = (self.all_peers(), self.node.clone());
                crate::spawn_worker("drain-query", move || {
                    let said = peers.into_iter().find_map(|mut p| {
                        p.timeout = Duration::from_secs(5);
                        let remembers = p.capacity().ok()?.drained_nodes.contains(&me);
                        remembers.then(|| format!("drained before reboot, as {} remembers", p.node))
                    });
                    report(Report::DrainKnown(said));
                });
            }
            Effect::AskCapacity(nodes) => {
                let peers: Vec<(String, Result<HttpPeer, String>)> =
                    nodes.into_iter().map(|n| (n.clone(), self.peer(&n))).collect();
                crate::spawn_worker("evacuate", move || {
                    let answers = peers.into_iter().map(|(n, p)| (n, p.and_then(|p| p.capacity()))).collect();
                    report(Report::Capacities(answers));
                });
            }
            Effect::ProbeLeases(guests) => {
                let Some(area) = self.edge.area.clone() else { return };
                crate::spawn_worker("lease-probe", move || {
                    let limit = Duration::from_secs(20);
                    let hosts = crate::leases::run(&area.host_status_argv(), limit).unwrap_or_default();
                    let hosts = crate::leases::host_states(&hosts);
                    let states = guests
                        .into_iter()
                        .map(|g| {
                            let r = crate::leases::run(&area.read_lease_argv(&g), limit);
                            let state = crate::leases::lease_state(r.as_deref().map_err(|e| e.as_str()), &hosts);
                            (g, state)
                        })
                        .collect();
                    report(Report::LeaseStates(states));
                });
            }
            Effect::Qmp { guest, command, ticket } => {
                let Some(reply) = self.edge.take(ticket) else { return };
                crate::spawn_worker(&format!("qmp-{guest}"), move || {
                    let cmd = command["execute"].as_str().unwrap_or("").to_string();
                    let args = command.get("arguments").cloned().unwrap_or(serde_json::json!({}));
                    let r = Qmp::connect(&qmp_path(&guest), Duration::from_secs(10))
                        .and_then(|mut q| q.execute(&cmd, args));
                    let _ = reply.send(r.map(|value| Answer::Qmp(QmpReturn { value })).map_err(Refusal::failed));
                });
            }
        }
    }

    /// Drives a migration out on a worker, reporting progress and the outcome.
    fn migrate_out(
        &mut self,
        guest: String,
        to: String,
        id: u64,
        bandwidth_mbps: Option<f64>,
        report: impl Fn(Report) + Send + Clone + 'static,
    ) {
        let cluster = self.boot.as_ref().and_then(|b| b.cluster.as_ref());
        let to_ip = cluster.and_then(|c| c.nodes.get(&to)).and_then(|n| n.peer_ip());
        let (mut peer, to_ip) = match (self.peer(&to), to_ip) {
            (Ok(p), Some(ip)) => (p, ip),
            (Err(e), _) => return report(Report::MigrationDone { guest, id, outcome: cannot_start(e) }),
            (_, None) => {
                return report(Report::MigrationDone {
                    guest,
                    id,
                    outcome: cannot_start(format!("{to} has no peer address")),
                })
            }
        };
        let settings = self.coord.as_ref().map(|c| c.settings().clone()).unwrap_or_default();
        let mut plan = mig::source::Plan::new(&guest, &to, to_ip, &settings, bandwidth_mbps);
        match self.stream_tls(&guest, &to) {
            Ok(tls) => plan.tls = Some(tls),
            Err(e) => return report(Report::MigrationDone { guest, id, outcome: cannot_start(e) }),
        }
        self.edge.cancels.insert(id, plan.cancel.clone());
        let mut lease = self.lease_of(&guest);
        crate::spawn_worker(&format!("migrate-{guest}"), move || {
            let progress = report.clone();
            let mut on_progress = move |phase: Phase, p: Option<&Progress>| {
                progress(Report::MigrationProgress { id, phase, progress: p.cloned() });
            };
            let mut clock = mig::RealClock::start();
            let outcome = match Qmp::connect(&qmp_path(&guest), Duration::from_secs(10)) {
                Ok(mut vm) => mig::source::migrate(&mut vm, &mut peer, &mut lease, &plan, &mut clock, &mut on_progress),
                Err(e) => Outcome::failed(Phase::Preparing, format!("cannot reach the guest's QMP: {e}"), true),
            };
            info!(guest = %guest, "migration worker done");
            report(Report::MigrationDone { guest, id, outcome });
        });
    }
}
