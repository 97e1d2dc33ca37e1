//! The guest coordinator: one record per guest that may run on this blade (its place, owner
//! check and why it waits), the migrations in both directions, drain and evacuation. Every
//! decision is made here, in pure code, against what the blade shows ([`Blade`]: services,
//! LUNs, memory) and returns [`Effect`]s that PID 1 carries out at the edge (`pid1::edge`):
//! adding and stopping services, asking peers, driving QMP on workers. Workers report back as
//! [`Report`]s, which are decisions too. Replies travel as [`Ticket`]s, answered by an effect.
//!
//! - `placement`: placing this blade's guests, owner checks, operators' actions on a guest
//! - `outgoing`: migrations from here, cancel, in doubt and resolve
//! - `incoming`: guests arriving here
//! - `evacuation`: drain, evacuation and the peers' drain notices
//!
//! A crash of PID 1 loses this state with the blade's processes (the guests' QEMUs are its
//! children, in its cgroups): a reboot places the guests afresh, asking the other blades first.

pub mod effects;
pub mod evacuation;
pub mod ha;
pub mod incoming;
pub mod outgoing;
pub mod owner;
pub mod placement;
#[cfg(test)]
mod tests;
pub mod view;

pub use effects::{Effect, Report, ServiceKind};
pub use view::guest_state;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::config::guest::GuestSpec;
use crate::config::ClusterConfig;
use crate::migration::{MigrationStatus, Phase, Settings};
use crate::proto::request::{Answer, Operator, Peer, Refusal, Reply, Request};
use crate::proto::Memory;
use crate::storage::LunState;
use crate::supervisor::{ServiceState, ServiceStatus};

/// Names a caller waiting for a reply; the edge holds the channel behind it.
pub type Ticket = u64;

/// What the coordinator reads of the blade it runs on.
pub trait Blade {
    /// The state of the guest's service, if it has one.
    fn service(&self, guest: &str) -> Option<ServiceStatus>;
    /// The state of an alias's LUN, if the alias table has it.
    fn lun(&self, alias: &str) -> Option<LunState>;
    fn memory(&self) -> Memory;
    /// What this blade's QEMU lacks to run a guest of this machine type and CPU model, in words
    /// (None: it has both, or it could not be asked).
    fn qemu_lacks(&self, _machine: &str, _cpu: &str) -> Option<String> {
        None
    }
    /// The release (image version) this blade runs.
    fn release(&self) -> String {
        "unknown".into()
    }

    fn state(&self, guest: &str) -> Option<ServiceState> {
        self.service(guest).map(|s| s.state)
    }
}

/// Where a guest stands beyond its service's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// Nothing beyond its service: placed here, or not placed yet.
    Here,
    /// Another blade runs it; `why` says how this blade knows.
    Elsewhere { node: String, why: String },
    /// Arriving from `from`: paused until the source says the stream is complete.
    Incoming { from: String, port: Option<u16>, since: Instant, migration: u64 },
    /// Leaving for `to`.
    Outgoing { to: String, migration: u64 },
    /// The stream completed but the destination did not confirm: paused here.
    InDoubt { to: String },
}

impl Place {
    /// For an operator's message.
    pub fn describe(&self) -> String {
        match self {
            Place::Here => "it is placed here".into(),
            Place::Elsewhere { node, why } => format!("it runs on {node} ({why})"),
            Place::Incoming { from, .. } => format!("it is arriving from {from}"),
            Place::Outgoing { to, .. } => format!("it is migrating to {to}"),
            Place::InDoubt { to } => format!("it is in doubt after a migration to {to} (bladevisor resolve)"),
        }
    }
}

/// Whether the other blades are being asked whether they run a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerCheck {
    Idle,
    Asking,
    /// A peer could not be asked: ask again then.
    RetryAt(Instant),
}

/// One guest that may run on this blade.
#[derive(Debug, Clone)]
pub struct Guest {
    pub spec: GuestSpec,
    pub place: Place,
    pub check: OwnerCheck,
    /// Why it is not started, when it should be.
    pub waiting: Option<String>,
}

/// Recent migrations kept for status.
const KEEP_MIGRATIONS: usize = 16;

/// The coordinator's state.
pub struct Coordinator {
    node: String,
    /// The other blades of the cluster, and why one cannot be reached (no peer address).
    nodes: BTreeMap<String, Result<(), String>>,
    settings: Settings,
    guests: BTreeMap<String, Guest>,
    migrations: Vec<(Instant, MigrationStatus)>,
    /// Outgoing migrations since boot, for the metrics (the list above keeps only the last).
    migration_stats: crate::proto::stats::MigrationStats,
    next_migration: u64,
    /// Why this blade takes no guests.
    drained: Option<String>,
    /// Whether the peers have said what they remember of this blade's drain.
    drain_known: bool,
    /// Peers that told us they are drained.
    drained_nodes: BTreeSet<String>,
    evacuation: Option<evacuation::Run>,
    shutting_down: bool,
    /// The lease area, when the cluster has one: no guest starts before it is joined.
    leases: Option<crate::leases::Lockspace>,
    /// Nodes by sanlock host id, and this blade's.
    host_ids: BTreeMap<u32, String>,
    /// Who holds the leases of this blade's `ha` guests, as last probed; when each was first
    /// seen held by a blade that stopped renewing; when to probe next.
    lease_states: BTreeMap<String, crate::leases::LeaseState>,
    dead_seen: BTreeMap<String, Instant>,
    next_probe: Option<Instant>,
    /// What happened to the lease area and the leases (for status), and the HA restarts made.
    lease_events: std::collections::VecDeque<(Instant, Option<String>, String)>,
    ha_restarts: u64,
    /// Something placement depends on changed: look again.
    dirty: bool,
    effects: Vec<Effect>,
}

/// The supervised service of a guest.
pub fn service_name(guest: &str) -> String {
    format!("guest-{guest}")
}

impl Coordinator {
    /// The coordinator of `node`: the guests that may run on it (its own, and those that may
    /// migrate here). Until [`Coordinator::start`] has learnt the drain, nothing is placed.
    pub fn new(node: &str, cluster: Option<&ClusterConfig>) -> Coordinator {
        let guests = cluster
            .map(|c| c.guests.values().filter(|g| g.may_run_on(node)).cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let nodes = cluster
            .map(|c| {
                c.nodes
                    .iter()
                    .filter(|(n, _)| *n != node)
                    .map(|(n, cfg)| {
                        let reach = cfg
                            .peer_ip()
                            .map(|_| ())
                            .ok_or_else(|| format!("{n} has no peer-link or static management address"));
                        (n.clone(), reach)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Coordinator {
            node: node.to_string(),
            nodes,
            settings: cluster.map(|c| c.migration.clone()).unwrap_or_default(),
            guests: guests
                .into_iter()
                .map(|spec| {
                    let g = Guest { spec, place: Place::Here, check: OwnerCheck::Idle, waiting: None };
                    (g.spec.name.clone(), g)
                })
                .collect(),
            migrations: vec![],
            migration_stats: Default::default(),
            next_migration: 0,
            drained: None,
            drain_known: false,
            drained_nodes: BTreeSet::new(),
            evacuation: None,
            shutting_down: false,
            leases: cluster.and_then(|c| c.ha.as_ref()).map(|_| crate::leases::Lockspace::Joining),
            host_ids: cluster
                .map(|c| c.nodes.iter().filter_map(|(n, cfg)| Some((cfg.host_id?, n.clone()))).collect())
                .unwrap_or_default(),
            lease_states: BTreeMap::new(),
            dead_seen: BTreeMap::new(),
            lease_events: Default::default(),
            ha_restarts: 0,
            next_probe: None,
            dirty: true,
            effects: vec![],
        }
    }

    /// At boot: asks the peers whether they remember this blade as drained (a rolling upgrade
    /// reboots a drained blade; it must come back drained). Guests are placed after.
    pub fn start(&mut self) {
        if self.nodes.is_empty() {
            self.drain_known = true;
        } else {
            self.effects.push(Effect::AskDrain);
        }
    }

    /// The effects decided since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn guest_specs(&self) -> impl Iterator<Item = &GuestSpec> {
        self.guests.values().map(|g| &g.spec)
    }

    /// Where this blade stands in the lease area (None: the cluster has none).
    pub fn leases(&self) -> Option<&crate::leases::Lockspace> {
        self.leases.as_ref()
    }

    /// Whether the peers have said what they remember of this blade's drain (at boot).
    pub fn drain_learnt(&self) -> bool {
        self.drain_known
    }

    pub fn drained(&self) -> Option<&str> {
        self.drained.as_deref()
    }

    pub fn drained_nodes(&self) -> Vec<String> {
        self.drained_nodes.iter().cloned().collect()
    }

    pub fn evacuation(&self) -> Option<crate::migration::Evacuation> {
        self.evacuation.as_ref().map(|r| r.status.clone())
    }

    /// The blade is going down: nothing new is started or accepted.
    pub fn shutting_down(&mut self) {
        self.shutting_down = true;
    }

    fn reply(&mut self, ticket: Option<Ticket>, r: Reply) {
        if let Some(t) = ticket {
            self.effects.push(Effect::Reply(t, r));
        }
    }

    fn is_home(&self, g: &Guest) -> bool {
        g.spec.node == self.node
    }

    /// The guest, or the operator's "no such guest" naming the ones there are.
    fn guest(&self, name: &str) -> Result<&Guest, Refusal> {
        self.guests.get(name).ok_or_else(|| {
            let here: Vec<&str> = self.guests.keys().map(String::as_str).collect();
            Refusal::not_found(format!("no guest named {name:?} on this blade (guests here: {})", here.join(", ")))
        })
    }

    /// The other blades that can be asked (those with a peer address).
    fn peers(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, reach)| reach.is_ok()).map(|(n, _)| n.clone()).collect()
    }

    fn guest_mut(&mut self, name: &str) -> Option<&mut Guest> {
        self.guests.get_mut(name)
    }

    fn set_place(&mut self, name: &str, place: Place) {
        if let Some(g) = self.guest_mut(name) {
            g.place = place;
        }
        self.dirty = true;
    }

    /// An operator's or a peer's request (reads are answered by [`Coordinator::guest_here`] and
    /// [`Coordinator::capacity`]); the answer comes as an [`Effect::Reply`] to `ticket`.
    pub fn request(&mut self, req: Request, ticket: Ticket, blade: &dyn Blade, now: Instant) {
        match req {
            Request::Operator(op) => self.operator(op, ticket, blade, now),
            Request::Peer(p) => self.peer(p, ticket, blade, now),
            Request::Read(r) => self.reply(Some(ticket), Err(Refusal::invalid(format!("not a guest request: {r:?}")))),
        }
    }

    /// An operator's request about guests, migrations or drain.
    pub fn operator(&mut self, req: Operator, ticket: Ticket, blade: &dyn Blade, now: Instant) {
        match req {
            Operator::Guest { name, action, force } => {
                if let Err(r) = self.guest_action(&name, action, force, ticket, blade, now) {
                    self.reply(Some(ticket), Err(r));
                }
            }
            Operator::Migrate { guest, to, bandwidth_mbps } => {
                let r = self.migrate(&guest, &to, bandwidth_mbps, blade, now).map(|id| {
                    Answer::MigrationStarted(crate::proto::request::MigrationStarted {
                        ok: format!("migration of {guest} to {to} started"),
                        id,
                    })
                });
                self.reply(Some(ticket), r);
            }
            Operator::MigrateCancel(guest) => self.migrate_cancel(&guest, ticket),
            Operator::Resolve(guest) => self.resolve(&guest, ticket),
            Operator::Evacuate { parallel } => self.evacuate(parallel, ticket, blade, now),
            Operator::Undrain => self.undrain(ticket),
            Operator::GuestQmp { guest, command } => self.qmp(&guest, command, ticket, blade),
            other => self.reply(Some(ticket), Err(Refusal::invalid(format!("not a guest request: {other:?}")))),
        }
    }

    /// A peer's request.
    pub fn peer(&mut self, req: Peer, ticket: Ticket, blade: &dyn Blade, now: Instant) {
        match req {
            Peer::Incoming { guest, from, caps, release } => {
                let a = incoming::Arrival { guest: &guest, from: &from, caps, release: release.as_deref() };
                self.incoming(a, ticket, blade, now)
            }
            Peer::IncomingResume { guest, from } => self.incoming_resume(&guest, &from, ticket),
            Peer::IncomingAbort { guest, from } => self.incoming_abort(&guest, &from, ticket),
            Peer::Drained { node, drained } => self.peer_drained(&node, drained, ticket),
        }
    }

    /// A worker's report.
    pub fn report(&mut self, r: Report, blade: &dyn Blade, now: Instant) {
        self.dirty = true;
        match r {
            Report::OwnersAnswered { guest, verdict, force, ticket } => {
                self.owners_answered(&guest, verdict, force, ticket, blade, now)
            }
            Report::Listening { guest, result, ticket } => self.listening(&guest, result, ticket),
            Report::Resumed { guest, result, ticket } => self.resumed(&guest, result, ticket),
            Report::MigrationProgress { id, phase, progress } => {
                if let Some(m) = self.migration_mut(id) {
                    m.phase = phase;
                    if progress.is_some() {
                        m.progress = progress;
                    }
                }
            }
            Report::MigrationDone { guest, id, outcome } => self.migration_done(&guest, id, outcome, blade, now),
            Report::DrainKnown(d) => self.drain_known(d),
            Report::Capacities(answers) => self.capacities(&answers, blade, now),
            Report::Resolved { guest, result, ticket } => self.resolved(&guest, result, ticket),
            Report::ServiceRefused { guest, why } => self.service_refused(&guest, &why),
            Report::Leases(state) => self.lockspace_is(state, now),
            Report::LeaseStates(states) => self.lease_states_known(states, blade, now),
        }
    }

    /// A storage change: placement looks again when a guest's disk appears or goes.
    pub fn storage_changed(&mut self, alias: &str) {
        if self.guests.values().any(|g| g.spec.disks.iter().any(|d| d.alias == alias)) {
            self.dirty = true;
        }
    }

    /// Brings placement and arrivals up to date; called on every pass of the main loop.
    pub fn tick(&mut self, blade: &dyn Blade, now: Instant) {
        self.watch_incoming(blade, now);
        self.place(blade, now);
        self.probe_leases(now);
    }

    fn new_migration(&mut self, guest: &str, direction: crate::migration::Direction, peer: &str, now: Instant) -> u64 {
        self.next_migration += 1;
        let id = self.next_migration;
        self.migrations.push((
            now,
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

    pub fn migration_stats(&self) -> &crate::proto::stats::MigrationStats {
        &self.migration_stats
    }

    fn migration_mut(&mut self, id: u64) -> Option<&mut MigrationStatus> {
        self.migrations.iter_mut().map(|(_, m)| m).find(|m| m.id == id)
    }

    /// The edge could not add a guest's service: it waits, with the reason.
    fn service_refused(&mut self, guest: &str, why: &str) {
        tracing::error!(guest = %guest, "cannot add its service: {why}");
        if matches!(self.guests.get(guest).map(|g| &g.place), Some(Place::Incoming { .. })) {
            self.drop_incoming(guest, &format!("cannot add its service: {why}"));
        }
        self.set_waiting(guest, Some(format!("cannot add its service: {why}")));
    }

    fn set_waiting(&mut self, guest: &str, why: Option<String>) {
        let Some(g) = self.guest_mut(guest) else { return };
        if let Some(w) = &why {
            if g.waiting.as_ref() != Some(w) {
                tracing::warn!(guest = %guest, "not started: {w}");
            }
        }
        g.waiting = why;
    }
}
