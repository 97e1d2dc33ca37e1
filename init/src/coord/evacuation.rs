//! Drain and evacuation: an evacuated blade takes no guests until undrained, and every guest
//! running on it goes to another of its blades, chosen from the candidates' capacity answers,
//! at most `parallel` migrations at once. The peers are told, and remember it across this
//! blade's reboot (a rolling upgrade reboots a drained blade; it must come back drained).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use tracing::{info, warn};

use super::incoming::MEMORY_MARGIN_MIB;
use super::{Blade, Coordinator, Effect, Place, Ticket};
use crate::config::guest::GuestSpec;
use crate::migration::{Ending, Evacuation, EvacuationItem, Outcome};
use crate::proto::request::{Answer, EvacuationStarted, Refusal};
use crate::proto::Capacity;
use crate::supervisor::ServiceState;

/// A running evacuation.
#[derive(Debug, Clone)]
pub struct Run {
    pub status: Evacuation,
    parallel: usize,
    /// Items (indexes into `status.guests`) with a target, waiting for a migration slot.
    queue: VecDeque<usize>,
    /// Migrations running, by id, and their item.
    running: BTreeMap<u64, usize>,
    /// Whether the targets are chosen (the capacity answers came).
    planned: bool,
}

impl Coordinator {
    /// Drains this blade and migrates every guest running here to another of its blades.
    pub(super) fn evacuate(&mut self, parallel: Option<usize>, ticket: Ticket, blade: &dyn Blade, now: Instant) {
        if self.evacuation.as_ref().is_some_and(|e| !e.status.done) {
            return self.reply(Some(ticket), Err(Refusal::conflict("an evacuation is already running")));
        }
        self.drained = Some("evacuated".into());
        info!("evacuation requested: this blade is drained; migrating every guest off it");
        self.effects.push(Effect::TellDrained(true));
        let running: Vec<&GuestSpec> = self
            .guests
            .values()
            .filter(|g| g.place == Place::Here && blade.state(&g.spec.name) == Some(ServiceState::Running))
            .map(|g| &g.spec)
            .collect();
        let mut peers: Vec<String> =
            running.iter().flat_map(|g| g.blades().filter(|n| **n != self.node).cloned()).collect();
        peers.sort();
        peers.dedup();
        let status = Evacuation {
            done: running.is_empty(),
            guests: running.iter().map(|g| EvacuationItem { guest: g.name.clone(), ..Default::default() }).collect(),
        };
        let parallel = parallel.unwrap_or(self.settings.parallel).max(1);
        let planned = running.is_empty();
        self.evacuation =
            Some(Run { status: status.clone(), parallel, queue: VecDeque::new(), running: BTreeMap::new(), planned });
        if !planned {
            self.effects.push(Effect::AskCapacity(peers));
        }
        let answer = EvacuationStarted { ok: "evacuation started".into(), guests: Some(status) };
        self.reply(Some(ticket), Ok(Answer::EvacuationStarted(answer)));
        self.pump_evacuation(blade, now);
    }

    /// The candidates answered: each guest gets its target (or why none), then migrations start.
    pub(super) fn capacities(
        &mut self,
        answers: &[(String, Result<Capacity, String>)],
        blade: &dyn Blade,
        now: Instant,
    ) {
        let Some(run) = self.evacuation.as_mut().filter(|r| !r.planned) else { return };
        run.planned = true;
        for (i, item) in run.status.guests.iter_mut().enumerate() {
            let Some(g) = self.guests.get(&item.guest) else { continue };
            match choose_target(&g.spec, &self.node, answers) {
                Ok(to) => {
                    item.to = Some(to);
                    run.queue.push_back(i);
                }
                Err(e) => {
                    item.moved = Some(false);
                    item.result = Some(e);
                }
            }
        }
        self.pump_evacuation(blade, now);
    }

    /// Starts queued migrations up to the evacuation's parallelism; ends it when none is left.
    pub(super) fn pump_evacuation(&mut self, blade: &dyn Blade, now: Instant) {
        loop {
            let Some(run) = self.evacuation.as_mut().filter(|r| r.planned && !r.status.done) else { return };
            if run.running.len() >= run.parallel {
                return;
            }
            let Some(i) = run.queue.pop_front() else {
                if run.running.is_empty() {
                    run.status.done = true;
                    for item in &run.status.guests {
                        info!(guest = %item.guest, to = ?item.to, "evacuation: {}", item.result.as_deref().unwrap_or("?"));
                    }
                    info!("evacuation done; the blade stays drained until undrained");
                }
                return;
            };
            let (guest, to) = (run.status.guests[i].guest.clone(), run.status.guests[i].to.clone().unwrap_or_default());
            let started = self.migrate(&guest, &to, None, blade, now);
            let Some(run) = self.evacuation.as_mut() else { return };
            match started {
                Ok(id) => {
                    run.status.guests[i].migration = Some(id);
                    run.running.insert(id, i);
                }
                Err(r) => {
                    run.status.guests[i].moved = Some(false);
                    run.status.guests[i].result = Some(r.message);
                }
            }
        }
    }

    /// Records a migration's outcome in the evacuation it belongs to.
    pub(super) fn evacuation_migration_done(&mut self, id: u64, outcome: &Outcome) {
        let Some(run) = self.evacuation.as_mut() else { return };
        if let Some(i) = run.running.remove(&id) {
            run.status.guests[i].moved = Some(outcome.result == Ending::Completed);
            run.status.guests[i].result = Some(outcome.summary());
        }
    }

    pub(super) fn undrain(&mut self, ticket: Ticket) {
        if self.evacuation.as_ref().is_some_and(|e| !e.status.done) {
            return self.reply(Some(ticket), Err(Refusal::conflict("an evacuation is running")));
        }
        let was = self.drained.take();
        self.dirty = true;
        self.effects.push(Effect::TellDrained(false));
        info!("undrained: this blade takes guests again");
        self.reply(Some(ticket), Ok(Answer::done(if was.is_some() { "undrained" } else { "was not drained" })));
    }

    /// What the peers remember of this blade's drain, asked at boot.
    pub(super) fn drain_known(&mut self, said: Option<String>) {
        if let Some(why) = &said {
            warn!("this blade is drained: {why}; no guest is placed until it is undrained");
            self.drained = Some(why.clone());
        }
        self.drain_known = true;
        self.dirty = true;
    }

    /// A peer says it is drained (or no longer).
    pub(super) fn peer_drained(&mut self, node: &str, drained: bool, ticket: Ticket) {
        let r = if !self.nodes.contains_key(node) {
            let shown = crate::config::error::shorten(node, 64);
            Err(Refusal::forbidden(format!("{shown:?} is not another blade of this cluster")))
        } else {
            if drained {
                info!(peer = %node, "peer says it is drained");
                self.drained_nodes.insert(node.to_string());
            } else {
                info!(peer = %node, "peer says it is undrained");
                self.drained_nodes.remove(node);
            }
            Ok(Answer::done("noted"))
        };
        self.reply(Some(ticket), r);
    }
}

/// Picks where a guest goes: the first of its blades, in configuration order, that answered,
/// is not drained and has the memory. `answers` holds each candidate's status or why not.
pub fn choose_target(
    guest: &GuestSpec,
    me: &str,
    answers: &[(String, Result<Capacity, String>)],
) -> Result<String, String> {
    let mut why = vec![];
    for node in guest.blades().filter(|n| *n != me) {
        match answers.iter().find(|(n, _)| n == node).map(|(_, a)| a) {
            None => why.push(format!("{node}: not asked")),
            Some(Err(e)) => why.push(format!("{node}: {e}")),
            Some(Ok(s)) if s.drained.is_some() => why.push(format!("{node}: drained")),
            Some(Ok(s)) if s.shutting_down => why.push(format!("{node}: shutting down")),
            Some(Ok(s)) if s.memory.available_mib < guest.memory_mib + MEMORY_MARGIN_MIB => why.push(format!(
                "{node}: {} MiB available, the guest needs {} MiB",
                s.memory.available_mib, guest.memory_mib
            )),
            Some(Ok(_)) => return Ok(node.clone()),
        }
    }
    if why.is_empty() {
        why.push("it may run on no other blade (migrate-to is empty)".into());
    }
    Err(format!("no blade can take guest {}: {}", guest.name, why.join("; ")))
}
