//! The main loop's side of guests: placing them (after asking the other blades whether they
//! run them), operators' actions, live migration in both directions, drain and evacuation.
//! Everything that talks to QMP or to a peer runs on a worker and reports back as an
//! [`Internal`] event, so the loop never waits on the network.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{Event, Init};
use crate::api::peer::HttpPeer;
use crate::api::{Reply, Request, ServiceAction};
use crate::coord::owner::{self, Answer, Verdict};
use crate::migration::{self as mig, Ending, MigrationStatus, Outcome, Phase, Progress};
use crate::proto::GuestState;
use crate::qemu::GuestSpec;
use crate::supervisor::ServiceState;

/// Where a guest stands beyond its service's state.
#[derive(Debug, Clone)]
pub enum Place {
    /// Another blade runs it; `why` says how this blade knows.
    Elsewhere { node: String, why: String },
    /// Arriving from `from`: paused until the source says the stream is complete.
    Incoming { from: String, port: u16, since: Instant, migration: u64 },
    /// Leaving for `to`.
    Outgoing { to: String, cancel: Arc<AtomicBool>, migration: u64 },
    /// The stream completed but the destination did not confirm: paused here.
    InDoubt { to: String },
}

impl Place {
    /// For an operator's message.
    fn describe(&self) -> String {
        match self {
            Place::Elsewhere { node, why } => format!("it runs on {node} ({why})"),
            Place::Incoming { from, .. } => format!("it is arriving from {from}"),
            Place::Outgoing { to, .. } => format!("it is migrating to {to}"),
            Place::InDoubt { to } => format!("it is in doubt after a migration to {to} (bladevisor resolve)"),
        }
    }
}

/// What workers report to the main loop.
pub enum Internal {
    OwnerChecked {
        guest: String,
        verdict: Verdict,
        force: bool,
        reply: Option<Sender<Reply>>,
    },
    IncomingListening {
        guest: String,
        result: Result<u16, String>,
        reply: Sender<Reply>,
    },
    IncomingResumed {
        guest: String,
        result: Result<(), String>,
        reply: Sender<Reply>,
    },
    MigrationProgress {
        id: u64,
        phase: Phase,
        progress: Option<Progress>,
    },
    MigrationDone {
        guest: String,
        id: u64,
        outcome: Outcome,
    },
    Evacuation(mig::Evacuation),
    /// What the peers remember of this blade's drain, asked at boot.
    DrainKnown(Option<String>),
    /// An in-doubt guest, settled: Ok(true) runs here, Ok(false) runs at the destination.
    Resolved {
        guest: String,
        result: Result<bool, String>,
        reply: Sender<Reply>,
    },
}

/// How long a guest refused because a peer could not be asked waits before asking again.
const OWNER_RETRY: Duration = Duration::from_secs(15);
/// Recent migrations kept for status.
const KEEP_MIGRATIONS: usize = 16;

fn service_name(guest: &str) -> String {
    format!("guest-{guest}")
}

/// Connects to a guest's QMP socket, waiting for its QEMU to create it.
fn qmp_wait(path: &std::path::Path, limit: Duration) -> Result<crate::qemu::qmp::Qmp, String> {
    let end = Instant::now() + limit;
    loop {
        match crate::qemu::qmp::Qmp::connect(path, Duration::from_secs(10)) {
            Ok(q) => return Ok(q),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl Init {
    fn cluster(&self) -> Option<&crate::config::ClusterConfig> {
        self.boot.as_ref().and_then(|b| b.cluster.as_ref())
    }

    fn settings(&self) -> crate::migration::Settings {
        self.cluster().map(|c| c.migration.clone()).unwrap_or_default()
    }

    fn peer(&self, node: &str) -> Result<HttpPeer, String> {
        let c = self.cluster().ok_or("no cluster configuration")?;
        HttpPeer::of(c, &self.node, node, self.api_port.unwrap_or(7480))
    }

    /// Every other blade of the cluster that can be reached (for drain notices).
    fn all_peers(&self) -> Vec<HttpPeer> {
        let Some(c) = self.cluster() else { return vec![] };
        c.nodes.keys().filter(|n| **n != self.node).filter_map(|n| self.peer(n).ok()).collect()
    }

    fn spec(&self, guest: &str) -> Option<GuestSpec> {
        self.guests.iter().find(|g| g.name == guest).cloned()
    }

    fn is_home(&self, g: &GuestSpec) -> bool {
        g.node == self.node
    }

    /// Why this guest cannot run here now (disks, memory), if it cannot.
    fn cannot_run(&self, g: &GuestSpec) -> Option<String> {
        let luns = crate::storage::lock(&self.storage).luns.clone();
        for d in &g.disks {
            match luns.iter().find(|l| l.alias == d.alias) {
                None => return Some(format!("disk {} is not in the alias table", d.alias)),
                Some(l) if l.state == crate::storage::LunState::Missing => {
                    return Some(format!("waiting for disk {} (missing)", d.alias))
                }
                _ => {}
            }
        }
        let total = super::memory().total_mib;
        (g.memory_mib >= total).then(|| format!("needs {} MiB of memory; this blade has {total} MiB", g.memory_mib))
    }

    /// Asks the guest's other blades whether they run it, on a worker.
    fn check_owner(&mut self, g: &GuestSpec, force: bool, reply: Option<Sender<Reply>>) {
        let peers: Vec<Result<HttpPeer, (String, String)>> =
            g.blades().filter(|n| **n != self.node).map(|n| self.peer(n).map_err(|e| (n.clone(), e))).collect();
        self.owner_checks.insert(g.name.clone(), None);
        let (tx, guest) = (self.tx.clone(), g.name.clone());
        crate::spawn_worker(&format!("owner-{guest}"), move || {
            let answers: Vec<(String, Answer)> = peers
                .into_iter()
                .map(|p| match p {
                    Ok(mut p) => {
                        p.timeout = Duration::from_secs(5);
                        (p.node.clone(), p.about(&guest))
                    }
                    Err((node, e)) => (node, Answer::Unreachable(e)),
                })
                .collect();
            let verdict = owner::decide(&answers);
            let _ = tx.send(Event::Internal(Internal::OwnerChecked { guest, verdict, force, reply }));
        });
    }

    /// Adds the guest's service (enabled or not), following its console.
    fn add_guest_service(&mut self, g: &GuestSpec, spec: crate::config::ServiceSpec) -> Result<(), String> {
        let mut spec = spec;
        // Guests stop before the storage under them.
        if self.sup.state("multipathd").is_some() {
            spec.after.push("multipathd".into());
        }
        self.sup.add(spec, Instant::now())?;
        if self.followed.insert(g.name.clone()) {
            crate::qemu::console::follow(
                self.consoles.clone(),
                g.name.clone(),
                crate::qemu::run_dir(&crate::run_dir(), &g.name).join("console.sock"),
            );
        }
        Ok(())
    }

    fn set_waiting(&mut self, guest: &str, why: Option<String>) {
        match why {
            Some(w) => {
                if self.guest_waiting.get(guest) != Some(&w) {
                    warn!(guest = %guest, "not started: {w}");
                    self.guest_waiting.insert(guest.to_string(), w);
                }
            }
            None => {
                self.guest_waiting.remove(guest);
            }
        }
    }

    /// Places this blade's own guests: once their disks are up and they fit, and (for a guest
    /// that may run on other blades) once those blades say they do not run it.
    pub(super) fn place_guests(&mut self) {
        if self.drain_known.is_none() {
            return;
        }
        let now = Instant::now();
        for g in self.guests.clone() {
            let service = service_name(&g.name);
            if !self.is_home(&g) || self.sup.state(&service).is_some() || self.places.contains_key(&g.name) {
                continue;
            }
            if g.autostart {
                if let Some(d) = &self.drained {
                    self.set_waiting(&g.name, Some(format!("this blade is drained ({d})")));
                    continue;
                }
                // An owner check in flight, or one to repeat later (cheap tests first: this
                // runs on every pass of the loop).
                match self.owner_checks.get(&g.name) {
                    Some(None) => continue,
                    Some(Some(retry)) if *retry > now => continue,
                    _ => {}
                }
            }
            if let Some(why) = self.cannot_run(&g) {
                self.set_waiting(&g.name, Some(why));
                continue;
            }
            if !g.autostart {
                // Defined here, started only by an operator (who goes through the owner check).
                self.set_waiting(&g.name, None);
                let spec = crate::qemu::service(&g, &crate::run_dir(), self.kvm);
                if let Err(e) = self.add_guest_service(&g, spec) {
                    error!(guest = %g.name, "{e}");
                }
                continue;
            }
            if g.migrate_to.is_empty() {
                self.start_guest_now(&g, false);
            } else {
                self.check_owner(&g, false, None);
            }
        }
    }

    /// Starts a guest here: adds its service, or starts the existing one.
    fn start_guest_now(&mut self, g: &GuestSpec, forced: bool) -> Reply {
        let service = service_name(&g.name);
        self.places.remove(&g.name);
        self.set_waiting(&g.name, None);
        if forced {
            warn!(guest = %g.name, "OPERATOR OVERRIDE: starting without the other blades' agreement");
        }
        if self.sup.state(&service).is_some() {
            return match self.sup.request_start(&service, Instant::now()) {
                Ok(()) => Reply::Ok(format!("{service}: start requested")),
                Err(e) => Reply::Error(409, e.to_string()),
            };
        }
        let mut spec = crate::qemu::service(g, &crate::run_dir(), self.kvm);
        spec.enabled = true;
        match self.add_guest_service(g, spec) {
            Ok(()) => {
                info!(guest = %g.name, "guest placed on this blade");
                Reply::Ok(format!("{service}: start requested"))
            }
            Err(e) => Reply::Error(409, e),
        }
    }

    fn owner_checked(&mut self, guest: String, verdict: Verdict, force: bool, reply: Option<Sender<Reply>>) {
        let Some(g) = self.spec(&guest) else { return };
        let busy = self.places.get(&guest).filter(|p| !matches!(p, Place::Elsewhere { .. })).map(|p| p.describe());
        let answer = match &verdict {
            _ if self.shutdown.is_some() => Reply::Error(409, "the blade is shutting down".into()),
            // A migration began while the blades were being asked: it decides, not this check.
            _ if busy.is_some() => {
                self.owner_checks.remove(&guest);
                Reply::Error(409, format!("guest {guest}: {}", busy.unwrap_or_default()))
            }
            Verdict::Free => {
                self.owner_checks.remove(&guest);
                self.start_guest_now(&g, false)
            }
            v if force => {
                warn!(guest = %guest, "{}", v.explain(&guest));
                self.owner_checks.remove(&guest);
                self.start_guest_now(&g, true)
            }
            Verdict::RunsOn { node, .. } => {
                // Definite: no retry; an operator's start asks again.
                self.owner_checks.remove(&guest);
                let why = verdict.explain(&guest);
                warn!(guest = %guest, "not started: {why}");
                self.guest_waiting.remove(&guest);
                self.places.insert(guest.clone(), Place::Elsewhere { node: node.clone(), why: why.clone() });
                Reply::Error(409, why)
            }
            Verdict::Unknown { .. } => {
                self.owner_checks.insert(guest.clone(), Some(Instant::now() + OWNER_RETRY));
                let why = verdict.explain(&guest);
                self.set_waiting(&guest, Some(why.clone()));
                Reply::Error(409, why)
            }
        };
        if let Some(r) = reply {
            let _ = r.send(answer);
        }
    }

    /// An operator's action on a guest.
    pub(super) fn guest_request(
        &mut self,
        name: String,
        action: ServiceAction,
        force: bool,
        reply: &Sender<Reply>,
    ) -> Reply {
        let Some(g) = self.spec(&name) else {
            let here: Vec<&str> = self.guests.iter().map(|g| g.name.as_str()).collect();
            return Reply::Error(
                404,
                format!("no guest named {name:?} on this blade (guests here: {})", here.join(", ")),
            );
        };
        let service = service_name(&name);
        match (action, self.places.get(&name)) {
            (ServiceAction::Kill, _) => {}
            (_, Some(Place::Outgoing { to, .. })) => {
                return Reply::Error(409, format!("guest {name} is migrating to {to}; cancel that first"))
            }
            (_, Some(Place::Incoming { from, .. })) => {
                return Reply::Error(409, format!("guest {name} is arriving from {from}; only kill applies"))
            }
            _ => {}
        }
        if action == ServiceAction::Start {
            if matches!(self.sup.state(&service), Some(ServiceState::Running | ServiceState::Starting)) {
                return Reply::Ok(format!("{service} already runs"));
            }
            if let Some(why) = self.cannot_run(&g) {
                return Reply::Error(409, format!("guest {name} cannot start here: {why}"));
            }
            if let (Some(d), false) = (&self.drained, force) {
                return Reply::Error(409, format!("this blade is drained ({d}); undrain it, or --force"));
            }
            if g.blades().all(|n| *n == self.node) {
                return self.start_guest_now(&g, false);
            }
            self.check_owner(&g, force, Some(reply.clone()));
            return Reply::Deferred;
        }
        if self.sup.state(&service).is_none() {
            let why = match self.places.get(&name) {
                Some(Place::Elsewhere { why, .. }) => why.clone(),
                _ => self.guest_waiting.get(&name).cloned().unwrap_or_else(|| "it is not started".into()),
            };
            return Reply::Error(409, format!("guest {name} has no process here: {why}"));
        }
        self.handle_request(Request::Service { name: service, action }, reply)
    }

    // ---- migration, source side ----

    fn new_migration(&mut self, guest: &str, direction: mig::Direction, peer: &str) -> u64 {
        self.next_migration += 1;
        let id = self.next_migration;
        self.migrations.push((
            Instant::now(),
            MigrationStatus {
                id,
                guest: guest.into(),
                direction,
                peer: peer.into(),
                phase: Phase::Preparing,
                progress: None,
                outcome: None,
                age_s: 0.0,
            },
        ));
        if self.migrations.len() > KEEP_MIGRATIONS {
            self.migrations.remove(0);
        }
        id
    }

    fn migration_mut(&mut self, id: u64) -> Option<&mut MigrationStatus> {
        self.migrations.iter_mut().map(|(_, m)| m).find(|m| m.id == id)
    }

    pub(super) fn migrate(&mut self, guest: String, to: String, bandwidth_mbps: Option<f64>) -> Reply {
        let Some(g) = self.spec(&guest) else {
            return Reply::Error(404, format!("no guest named {guest:?} on this blade"));
        };
        if self.shutdown.is_some() {
            return Reply::Error(409, "the blade is shutting down".into());
        }
        if to == self.node || !g.may_run_on(&to) {
            let allowed: Vec<&str> = g.blades().filter(|n| **n != self.node).map(String::as_str).collect();
            return Reply::Error(
                409,
                format!("guest {guest} may not migrate to {to} (its blades besides this one: {})", allowed.join(", ")),
            );
        }
        if let Some(p) = self.places.get(&guest) {
            return Reply::Error(409, format!("guest {guest} cannot migrate now: {}", p.describe()));
        }
        if self.sup.state(&service_name(&guest)) != Some(ServiceState::Running) {
            return Reply::Error(409, format!("guest {guest} does not run on this blade"));
        }
        let mut peer = match self.peer(&to) {
            Ok(p) => p,
            Err(e) => return Reply::Error(409, format!("cannot migrate to {to}: {e}")),
        };
        let to_ip = match self.cluster().and_then(|c| c.nodes.get(&to)).and_then(|n| n.peer_ip()) {
            Some(ip) => ip,
            None => return Reply::Error(409, format!("{to} has no peer address")),
        };
        let plan = mig::source::Plan::new(&guest, &to, to_ip, &self.settings(), bandwidth_mbps);
        let id = self.new_migration(&guest, mig::Direction::Out, &to);
        self.places
            .insert(guest.clone(), Place::Outgoing { to: to.clone(), cancel: plan.cancel.clone(), migration: id });
        let qmp = crate::qemu::qmp_path(&crate::run_dir(), &guest);
        let tx = self.tx.clone();
        info!(guest = %guest, to = %to, "live migration requested");
        crate::spawn_worker(&format!("migrate-{guest}"), move || {
            let progress_tx = tx.clone();
            let mut report = move |phase: Phase, p: Option<&Progress>| {
                let _ =
                    progress_tx.send(Event::Internal(Internal::MigrationProgress { id, phase, progress: p.cloned() }));
            };
            let mut clock = mig::RealClock::start();
            let outcome = match crate::qemu::qmp::Qmp::connect(&qmp, Duration::from_secs(10)) {
                Ok(mut vm) => mig::source::migrate(&mut vm, &mut peer, &plan, &mut clock, &mut report),
                Err(e) => Outcome::failed(Phase::Preparing, format!("cannot reach the guest's QMP: {e}"), true),
            };
            let _ = tx.send(Event::Internal(Internal::MigrationDone { guest: plan.guest.clone(), id, outcome }));
        });
        Reply::Json(serde_json::json!({ "ok": format!("migration of {guest} to {to} started"), "id": id }))
    }

    fn migration_done(&mut self, guest: String, id: u64, outcome: Outcome) {
        let to = match self.places.get(&guest) {
            Some(Place::Outgoing { to, .. }) => to.clone(),
            _ => "?".into(),
        };
        match outcome.result {
            Ending::Completed => {
                info!(guest = %guest, to = %to, total_ms = outcome.total_ms, downtime_ms = outcome.downtime_ms, bytes = outcome.transferred_bytes, "migration {}", outcome.summary());
                // The destination runs it: the paused source process goes, without its policy.
                self.sup.discard(&service_name(&guest), &mut self.rt, Instant::now());
                self.places
                    .insert(guest.clone(), Place::Elsewhere { node: to.clone(), why: format!("migrated to {to}") });
            }
            Ending::Failed => {
                warn!(guest = %guest, to = %to, "migration {}", outcome.summary());
                self.places.remove(&guest);
            }
            Ending::InDoubt => {
                error!(guest = %guest, to = %to, "migration {}", outcome.summary());
                self.places.insert(guest.clone(), Place::InDoubt { to: to.clone() });
            }
        }
        if let Some(m) = self.migration_mut(id) {
            m.phase = Phase::Done;
            m.outcome = Some(outcome);
        }
    }

    pub(super) fn migrate_cancel(&mut self, guest: &str) -> Reply {
        match self.places.get(guest) {
            Some(Place::Outgoing { cancel, to, .. }) => {
                cancel.store(true, Ordering::SeqCst);
                info!(guest = %guest, to = %to, "migration cancel requested by operator");
                Reply::Ok(format!("cancelling the migration of {guest} to {to}"))
            }
            _ => Reply::Error(409, format!("guest {guest} is not migrating from this blade")),
        }
    }

    /// Settles a guest left paused here by a migration its destination did not confirm.
    pub(super) fn resolve(&mut self, guest: String, reply: &Sender<Reply>) -> Reply {
        let Some(Place::InDoubt { to }) = self.places.get(&guest).cloned() else {
            return Reply::Error(409, format!("guest {guest} is not in doubt on this blade"));
        };
        let peer = match self.peer(&to) {
            Ok(p) => p,
            Err(e) => return Reply::Error(409, e),
        };
        let qmp = crate::qemu::qmp_path(&crate::run_dir(), &guest);
        let (tx, reply) = (self.tx.clone(), reply.clone());
        info!(guest = %guest, to = %to, "resolving an in-doubt migration: asking {to} again");
        crate::spawn_worker(&format!("resolve-{guest}"), move || {
            let verdict = owner::decide(&[(to.clone(), peer.about(&guest))]);
            let resume_here = |vm_path: &std::path::Path| {
                crate::qemu::qmp::Qmp::connect(vm_path, Duration::from_secs(10))
                    .and_then(|mut q| q.execute("cont", serde_json::json!({})))
                    .map(|_| true)
            };
            let result = match owner::resolve_in_doubt(&verdict) {
                owner::Resolution::DestinationKeepsIt => Ok(false),
                owner::Resolution::ResumeHere => resume_here(&qmp),
                owner::Resolution::AbortThereResumeHere => {
                    let mut p = peer;
                    match mig::Peer::abort(&mut p, &guest) {
                        Ok(()) => resume_here(&qmp),
                        Err(e) => Err(format!("{to} holds a paused copy and did not remove it: {e}")),
                    }
                }
                owner::Resolution::StillUnknown(why) => Err(format!("still cannot ask {to}: {why}")),
            };
            let _ = tx.send(Event::Internal(Internal::Resolved { guest, result, reply }));
        });
        Reply::Deferred
    }

    fn resolved(&mut self, guest: String, result: Result<bool, String>, reply: Sender<Reply>) {
        let to = match self.places.get(&guest) {
            Some(Place::InDoubt { to }) => to.clone(),
            _ => "?".into(),
        };
        let answer = match result {
            Ok(true) => {
                warn!(guest = %guest, to = %to, "in doubt resolved: {to} has no copy; resumed here");
                self.places.remove(&guest);
                Reply::Ok(format!("guest {guest} runs here again ({to} has no copy)"))
            }
            Ok(false) => {
                warn!(guest = %guest, to = %to, "in doubt resolved: {to} runs it; the paused copy here goes");
                self.sup.discard(&service_name(&guest), &mut self.rt, Instant::now());
                self.places
                    .insert(guest.clone(), Place::Elsewhere { node: to.clone(), why: format!("migrated to {to}") });
                Reply::Ok(format!("guest {guest} runs on {to}; the paused copy here is removed"))
            }
            Err(e) => Reply::Error(409, format!("guest {guest} stays paused here: {e}")),
        };
        let _ = reply.send(answer);
    }

    // ---- migration, destination side ----

    pub(super) fn incoming(&mut self, guest: String, from: String, caps: Vec<String>, reply: &Sender<Reply>) -> Reply {
        let Some(g) = self.spec(&guest) else {
            return Reply::Error(404, format!("guest {guest} may not run on {}", self.node));
        };
        // Only a blade of this cluster that may itself run the guest can hand it over.
        if from == self.node || !g.may_run_on(&from) {
            return Reply::Error(
                403,
                format!("{from:?} is not a blade guest {guest} may migrate from (its blades: {})", blade_list(&g)),
            );
        }
        if let Some(c) = caps.iter().find(|c| !mig::is_capability_name(c)) {
            return Reply::Error(400, format!("{c:?} is not a QEMU migration capability name"));
        }
        if self.shutdown.is_some() {
            return Reply::Error(409, format!("{} is shutting down", self.node));
        }
        if let Some(d) = &self.drained {
            return Reply::Error(409, format!("{} is drained ({d})", self.node));
        }
        let service = service_name(&guest);
        if let Some(st) = self.sup.state(&service) {
            if matches!(
                st,
                ServiceState::Waiting
                    | ServiceState::Running
                    | ServiceState::Starting
                    | ServiceState::Stopping
                    | ServiceState::Backoff
            ) || self.places.contains_key(&guest)
                && !matches!(self.places.get(&guest), Some(Place::Elsewhere { .. }))
            {
                return Reply::Error(409, format!("guest {guest} already has a process on {} ({st:?})", self.node));
            }
            // A stopped copy of our own: make way for the arriving one.
            self.sup.discard(&service, &mut self.rt, Instant::now());
        }
        if let Some(why) = self.cannot_run(&g) {
            return Reply::Error(409, format!("guest {guest} cannot run on {}: {why}", self.node));
        }
        let available = super::memory().available_mib;
        if available < g.memory_mib + 64 {
            return Reply::Error(
                409,
                format!("{} has {available} MiB available; guest {guest} needs {} MiB", self.node, g.memory_mib),
            );
        }
        let settings = self.settings();
        let Some(ports) = settings.port_range() else {
            return Reply::Error(500, "no migration port range".into());
        };
        let spec = crate::qemu::incoming_service(&g, &crate::run_dir(), self.kvm);
        if let Err(e) = self.add_guest_service(&g, spec) {
            return Reply::Error(409, e);
        }
        let id = self.new_migration(&guest, mig::Direction::In, &from);
        let taken: Vec<u16> = self
            .places
            .values()
            .filter_map(|p| match p {
                Place::Incoming { port, .. } => Some(*port),
                _ => None,
            })
            .collect();
        self.places.insert(
            guest.clone(),
            Place::Incoming { from: from.clone(), port: 0, since: Instant::now(), migration: id },
        );
        self.set_waiting(&guest, None);
        info!(guest = %guest, from = %from, "incoming migration: guest started paused");
        let qmp = crate::qemu::qmp_path(&crate::run_dir(), &guest);
        let (tx, reply) = (self.tx.clone(), reply.clone());
        crate::spawn_worker(&format!("incoming-{guest}"), move || {
            let result = qmp_wait(&qmp, Duration::from_secs(20))
                .and_then(|mut vm| mig::dest::listen(&mut vm, &caps, ports, &taken));
            let _ = tx.send(Event::Internal(Internal::IncomingListening { guest, result, reply }));
        });
        Reply::Deferred
    }

    fn incoming_id(&self, guest: &str) -> Option<u64> {
        match self.places.get(guest) {
            Some(Place::Incoming { migration, .. }) => Some(*migration),
            _ => None,
        }
    }

    /// Removes an arriving guest's process and its place.
    fn drop_incoming(&mut self, guest: &str, why: &str) {
        if let Some(id) = self.incoming_id(guest) {
            warn!(guest = %guest, "incoming migration dropped: {why}");
            self.places.remove(guest);
            self.sup.discard(&service_name(guest), &mut self.rt, Instant::now());
            if let Some(m) = self.migration_mut(id) {
                m.phase = Phase::Done;
                m.outcome = Some(Outcome::failed(Phase::Streaming, why, false));
            }
        }
    }

    fn incoming_listening(&mut self, guest: String, result: Result<u16, String>, reply: Sender<Reply>) {
        let answer = match result {
            Ok(p) => {
                if let Some(Place::Incoming { port, .. }) = self.places.get_mut(&guest) {
                    *port = p;
                }
                info!(guest = %guest, port = p, "incoming migration: listening");
                if let Some(id) = self.incoming_id(&guest) {
                    if let Some(m) = self.migration_mut(id) {
                        m.phase = Phase::Streaming;
                    }
                }
                Reply::Json(serde_json::json!({ "guest": guest, "port": p }))
            }
            Err(e) => {
                self.drop_incoming(&guest, &format!("cannot listen: {e}"));
                Reply::Error(409, format!("{}: cannot listen for guest {guest}: {e}", self.node))
            }
        };
        let _ = reply.send(answer);
    }

    pub(super) fn incoming_resume(&mut self, guest: String, reply: &Sender<Reply>) -> Reply {
        if self.incoming_id(&guest).is_none() {
            return Reply::Error(409, format!("guest {guest} is not arriving on {}", self.node));
        }
        let qmp = crate::qemu::qmp_path(&crate::run_dir(), &guest);
        let (tx, reply) = (self.tx.clone(), reply.clone());
        crate::spawn_worker(&format!("resume-{guest}"), move || {
            let result = qmp_wait(&qmp, Duration::from_secs(5)).and_then(|mut vm| mig::dest::resume(&mut vm));
            let _ = tx.send(Event::Internal(Internal::IncomingResumed { guest, result, reply }));
        });
        Reply::Deferred
    }

    fn incoming_resumed(&mut self, guest: String, result: Result<(), String>, reply: Sender<Reply>) {
        let answer = match result {
            Ok(()) => {
                let from = match self.places.remove(&guest) {
                    Some(Place::Incoming { from, .. }) => from,
                    _ => "?".into(),
                };
                if let Some(g) = self.spec(&guest) {
                    // From now on it is this blade's guest, with its own restart policy.
                    self.sup.set_restart(&service_name(&guest), g.restart);
                }
                info!(guest = %guest, from = %from, "incoming migration complete: the guest runs here");
                Reply::Ok(format!("guest {guest} runs on {}", self.node))
            }
            Err(e) => {
                // Refused, and our copy goes: the source's is then the only one.
                self.drop_incoming(&guest, &format!("cannot resume: {e}"));
                Reply::Error(409, format!("{} cannot resume guest {guest}: {e}", self.node))
            }
        };
        let _ = reply.send(answer);
    }

    pub(super) fn incoming_abort(&mut self, guest: &str) -> Reply {
        if self.incoming_id(guest).is_none() {
            return Reply::Ok(format!("no incoming process for guest {guest}"));
        }
        self.drop_incoming(guest, "aborted by the source");
        Reply::Ok(format!("incoming guest {guest} removed"))
    }

    /// Arriving guests whose QEMU ended (a broken stream ends it) or that waited too long.
    pub(super) fn watch_incoming(&mut self) {
        if !self.places.values().any(|p| matches!(p, Place::Incoming { .. })) {
            return;
        }
        let limit = crate::config::values::secs(self.settings().timeout_s) + Duration::from_secs(60);
        let ended: Vec<(String, String)> = self
            .places
            .iter()
            .filter_map(|(guest, p)| match p {
                Place::Incoming { since, .. } => match self.sup.state(&service_name(guest)) {
                    Some(ServiceState::Exited | ServiceState::Failed | ServiceState::Stopped) | None => {
                        Some((guest.clone(), "its QEMU ended (the stream broke or was refused)".to_string()))
                    }
                    _ if since.elapsed() > limit => {
                        Some((guest.clone(), format!("not resumed within {} s", limit.as_secs())))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        for (guest, why) in ended {
            self.drop_incoming(&guest, &why);
        }
    }

    // ---- drain and evacuation ----

    fn tell_peers_drained(&self, drained: bool) {
        let peers = self.all_peers();
        let me = self.node.clone();
        crate::spawn_worker("drain-notice", move || {
            let verb = if drained { "drained" } else { "undrained" };
            for p in peers {
                if let Err(e) = p.post(&format!("/v1/nodes/{me}/{verb}")) {
                    warn!(peer = %p.node, "could not tell it this blade is {verb}: {e}");
                }
            }
        });
    }

    /// At boot: asks the peers whether they remember this blade as drained (a rolling upgrade
    /// reboots a drained blade; it must come back drained). Guests are placed after.
    pub(super) fn learn_drain(&mut self) {
        let peers = self.all_peers();
        if peers.is_empty() {
            self.drain_known = Some(None);
            return;
        }
        let (tx, me) = (self.tx.clone(), self.node.clone());
        crate::spawn_worker("drain-query", move || {
            let mut said = None;
            for mut p in peers {
                p.timeout = Duration::from_secs(5);
                if let Ok(s) = p.status() {
                    if s.drained_nodes.contains(&me) {
                        said = Some(format!("drained before reboot, as {} remembers", p.node));
                        break;
                    }
                }
            }
            let _ = tx.send(Event::Internal(Internal::DrainKnown(said)));
        });
    }

    pub(super) fn evacuate(&mut self, parallel: Option<usize>) -> Reply {
        if self.evacuation.as_ref().is_some_and(|e| !e.done) {
            return Reply::Error(409, "an evacuation is already running".into());
        }
        self.drained = Some("evacuated".into());
        info!("evacuation requested: this blade is drained; migrating every guest off it");
        self.tell_peers_drained(true);
        let running: Vec<GuestSpec> = self
            .guests
            .iter()
            .filter(|g| matches!(self.sup.state(&service_name(&g.name)), Some(ServiceState::Running)))
            .filter(|g| !self.places.contains_key(&g.name))
            .cloned()
            .collect();
        let parallel = parallel.unwrap_or(self.settings().parallel).max(1);
        let mut peers: BTreeMap<String, Result<HttpPeer, String>> = BTreeMap::new();
        for g in &running {
            for n in g.blades().filter(|n| **n != self.node) {
                peers.entry(n.clone()).or_insert_with(|| self.peer(n));
            }
        }
        let evac = mig::Evacuation {
            done: running.is_empty(),
            guests: running
                .iter()
                .map(|g| mig::EvacuationItem { guest: g.name.clone(), ..Default::default() })
                .collect(),
        };
        self.evacuation = Some(evac.clone());
        let (tx, me) = (self.tx.clone(), self.node.clone());
        crate::spawn_worker("evacuate", move || evacuate_worker(tx, me, running, peers, parallel, evac));
        Reply::Json(serde_json::json!({ "ok": "evacuation started", "guests": self.evacuation }))
    }

    pub(super) fn undrain(&mut self) -> Reply {
        if self.evacuation.as_ref().is_some_and(|e| !e.done) {
            return Reply::Error(409, "an evacuation is running".into());
        }
        let was = self.drained.take();
        self.tell_peers_drained(false);
        info!("undrained: this blade takes guests again");
        Reply::Ok(if was.is_some() { "undrained".into() } else { "was not drained".into() })
    }

    /// An operator's read-only QMP query to a guest's QEMU, logged; the answer comes from a
    /// worker. Anything that changes QEMU (or reads host files: `human-monitor-command`,
    /// `migrate` to `exec:`, `blockdev-add`, `pmemsave`) is refused: it would be root on the blade.
    pub(super) fn guest_qmp(&mut self, guest: String, command: serde_json::Value, reply: &Sender<Reply>) -> Reply {
        let name = command["execute"].as_str().unwrap_or("");
        if !crate::qemu::qmp::is_read_only(name) {
            return Reply::Error(
                403,
                format!(
                    "QMP command {:?} is not one of the read-only queries the API passes on ({})",
                    crate::config::error::shorten(name, 64),
                    crate::qemu::qmp::READ_ONLY.join(", ")
                ),
            );
        }
        if self.sup.state(&service_name(&guest)).is_none() {
            return Reply::Error(404, format!("guest {guest} has no process on this blade"));
        }
        warn!(guest = %guest, command = %crate::config::error::shorten(&command.to_string(), 200), "QMP query from an operator");
        let qmp = crate::qemu::qmp_path(&crate::run_dir(), &guest);
        let reply = reply.clone();
        crate::spawn_worker(&format!("qmp-{guest}"), move || {
            let cmd = command["execute"].as_str().unwrap_or("").to_string();
            let args = command.get("arguments").cloned().unwrap_or(serde_json::json!({}));
            let r =
                crate::qemu::qmp::Qmp::connect(&qmp, Duration::from_secs(10)).and_then(|mut q| q.execute(&cmd, args));
            let _ = reply.send(match r {
                Ok(v) => Reply::Json(serde_json::json!({ "return": v })),
                Err(e) => Reply::Error(422, e),
            });
        });
        Reply::Deferred
    }

    pub(super) fn internal(&mut self, i: Internal) {
        match i {
            Internal::OwnerChecked { guest, verdict, force, reply } => self.owner_checked(guest, verdict, force, reply),
            Internal::IncomingListening { guest, result, reply } => self.incoming_listening(guest, result, reply),
            Internal::IncomingResumed { guest, result, reply } => self.incoming_resumed(guest, result, reply),
            Internal::MigrationProgress { id, phase, progress } => {
                if let Some(m) = self.migration_mut(id) {
                    m.phase = phase;
                    if progress.is_some() {
                        m.progress = progress;
                    }
                }
            }
            Internal::MigrationDone { guest, id, outcome } => self.migration_done(guest, id, outcome),
            Internal::Evacuation(e) => {
                if e.done {
                    for item in &e.guests {
                        info!(guest = %item.guest, to = ?item.to, "evacuation: {}", item.result.as_deref().unwrap_or("?"));
                    }
                    info!("evacuation done; the blade stays drained until undrained");
                }
                self.evacuation = Some(e);
            }
            Internal::Resolved { guest, result, reply } => self.resolved(guest, result, reply),
            Internal::DrainKnown(d) => {
                if let Some(why) = &d {
                    warn!("this blade is drained: {why}; no guest is placed until it is undrained");
                    self.drained = Some(why.clone());
                }
                self.drain_known = Some(d);
            }
        }
    }

    pub(super) fn guest_status(&self) -> Vec<crate::proto::GuestStatus> {
        let services = self.sup.status(Instant::now());
        self.guests
            .iter()
            .filter_map(|g| {
                let s = services.iter().find(|s| s.name == service_name(&g.name));
                let place = self.places.get(&g.name);
                if s.is_none() && place.is_none() && !self.is_home(g) {
                    return None;
                }
                let waiting = self.guest_waiting.get(&g.name).cloned();
                let mut state = crate::coord::guest_state(s.map(|s| s.state), waiting.is_none());
                let mut reason = waiting.or_else(|| s.and_then(|s| s.reason.clone()));
                match place {
                    Some(Place::Elsewhere { node, why }) if s.is_none() => {
                        state = GuestState::Elsewhere;
                        reason = Some(format!("runs on {node}: {why}"));
                    }
                    Some(Place::Incoming { from, .. }) => {
                        state = GuestState::Incoming;
                        reason = Some(format!("arriving from {from}"));
                    }
                    Some(Place::Outgoing { to, .. }) => {
                        state = GuestState::Migrating;
                        reason = Some(format!("migrating to {to}"));
                    }
                    Some(Place::InDoubt { to }) => {
                        state = GuestState::InDoubt;
                        reason = Some(format!("paused here after a migration to {to} that {to} did not confirm"));
                    }
                    _ => {}
                }
                Some(crate::proto::GuestStatus {
                    name: g.name.clone(),
                    state,
                    pid: s.and_then(|s| s.pid),
                    restarts: s.map(|s| s.restarts).unwrap_or(0),
                    uptime_s: s.map(|s| s.since_s).unwrap_or(0.0),
                    disks: g.disks.iter().map(|d| d.alias.clone()).collect(),
                    reason,
                })
            })
            .collect()
    }

    /// A migration's outcome as JSON (null while it runs or when it is unknown).
    pub(super) fn migration_outcome(&self, id: u64) -> Reply {
        let o = self.migrations.iter().find(|(_, m)| m.id == id).and_then(|(_, m)| m.outcome.as_ref());
        Reply::Json(serde_json::to_value(o).unwrap_or_default())
    }

    pub(super) fn migration_status(&self) -> Vec<MigrationStatus> {
        self.migrations.iter().map(|(t, m)| MigrationStatus { age_s: t.elapsed().as_secs_f64(), ..m.clone() }).collect()
    }
}

/// The evacuation itself: picks each guest's destination from its blades' answers, then runs
/// the migrations through the main loop, at most `parallel` at once, and reports as it goes.
fn evacuate_worker(
    tx: Sender<Event>,
    me: String,
    guests: Vec<GuestSpec>,
    peers: BTreeMap<String, Result<HttpPeer, String>>,
    parallel: usize,
    mut evac: mig::Evacuation,
) {
    let answers: Vec<(String, Result<crate::proto::Capacity, String>)> = peers
        .into_iter()
        .map(|(n, p)| {
            let s = p.and_then(|p| p.status()).map(|s| crate::proto::Capacity {
                node: s.node,
                drained: s.drained,
                shutting_down: s.shutting_down.is_some(),
                memory: s.memory,
            });
            (n, s)
        })
        .collect();
    let report = |e: &mig::Evacuation| {
        let _ = tx.send(Event::Internal(Internal::Evacuation(e.clone())));
    };
    let mut queue: Vec<usize> = vec![];
    for (i, g) in guests.iter().enumerate() {
        match crate::coord::evacuation::choose_target(g, &me, &answers) {
            Ok(to) => {
                evac.guests[i].to = Some(to);
                queue.push(i);
            }
            Err(e) => {
                evac.guests[i].moved = Some(false);
                evac.guests[i].result = Some(e);
            }
        }
    }
    report(&evac);
    let mut running: Vec<(usize, u64)> = vec![];
    let mut queue = queue.into_iter();
    loop {
        while running.len() < parallel {
            let Some(i) = queue.next() else { break };
            let to = evac.guests[i].to.clone().unwrap_or_default();
            let req = Request::Migrate { guest: guests[i].name.clone(), to, bandwidth_mbps: None };
            match crate::api::ask(&tx, req) {
                Reply::Json(v) => {
                    let id = v["id"].as_u64().unwrap_or(0);
                    evac.guests[i].migration = Some(id);
                    running.push((i, id));
                }
                Reply::Error(_, e) => {
                    evac.guests[i].moved = Some(false);
                    evac.guests[i].result = Some(e);
                }
                _ => {}
            }
            report(&evac);
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let before = running.len();
        running.retain(|(i, id)| {
            // The one migration's outcome: a cheap question for the main loop.
            let Reply::Json(v) = crate::api::ask(&tx, Request::MigrationOutcome(*id)) else { return true };
            let Ok(o) = serde_json::from_value::<Outcome>(v) else { return true };
            evac.guests[*i].moved = Some(o.result == Ending::Completed);
            evac.guests[*i].result = Some(o.summary());
            false
        });
        if running.len() != before {
            report(&evac);
        }
    }
    evac.done = true;
    report(&evac);
}

/// A guest's blades, for messages: `blade1, blade2`.
fn blade_list(g: &GuestSpec) -> String {
    g.blades().cloned().collect::<Vec<_>>().join(", ")
}
