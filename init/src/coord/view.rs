//! What the coordinator shows: each guest's state and reason as `/v1/status` has it, the
//! narrow answers peers read (one guest, capacity), recent migrations; and the one operator
//! call that only reads, a QMP query.

use std::time::Instant;

use super::{Blade, Coordinator, Effect, Guest, Place, Ticket};
use crate::migration::MigrationStatus;
use crate::proto::request::{GuestHere, Refusal};
use crate::proto::{Capacity, GuestState, GuestStatus};
use crate::storage::LunState;
use crate::supervisor::ServiceState;

/// What an operator calls a guest's state, from its service's.
pub fn guest_state(service: Option<ServiceState>, disks_ready: bool) -> GuestState {
    match service {
        None if !disks_ready => GuestState::WaitingForDisks,
        None => GuestState::Defined,
        Some(ServiceState::Waiting) | Some(ServiceState::Starting) => GuestState::Starting,
        Some(ServiceState::Running) => GuestState::Running,
        Some(ServiceState::Backoff) => GuestState::Crashed,
        Some(ServiceState::Stopping) => GuestState::Stopping,
        Some(ServiceState::Exited) | Some(ServiceState::Stopped) => GuestState::Stopped,
        Some(ServiceState::Failed) => GuestState::Failed,
    }
}

impl Coordinator {
    /// Recent migrations, newest last.
    pub fn migration_status(&self, now: Instant) -> Vec<MigrationStatus> {
        self.migrations
            .iter()
            .map(|(t, m)| MigrationStatus { age_s: now.saturating_duration_since(*t).as_secs_f64(), ..m.clone() })
            .collect()
    }

    /// One guest as `/v1/status` shows it, or None when it has nothing to do with this blade.
    pub(super) fn status_of(&self, g: &Guest, blade: &dyn Blade) -> Option<GuestStatus> {
        let s = blade.service(&g.spec.name);
        // A guest that may come here (by migration, or by an HA restart) shows once it has
        // something to show: a process, a place, or its lease's holder.
        if s.is_none() && g.place == Place::Here && !self.is_home(g) && self.lease_of(&g.spec.name).is_none() {
            return None;
        }
        let disks_ready = g.spec.disks.iter().all(|d| matches!(blade.lun(&d.alias), Some(l) if l != LunState::Missing));
        let mut state = guest_state(s.as_ref().map(|s| s.state), disks_ready);
        let mut reason = g.waiting.clone().or_else(|| s.as_ref().and_then(|s| s.reason.clone()));
        let mut runs_on = None;
        match &g.place {
            Place::Elsewhere { node, why } if s.is_none() => {
                state = GuestState::Elsewhere;
                runs_on = Some(node.clone());
                reason = Some(format!("runs on {node}: {why}"));
            }
            Place::Incoming { from, .. } => {
                state = GuestState::Incoming;
                reason = Some(format!("arriving from {from}"));
            }
            Place::Outgoing { to, .. } => {
                state = GuestState::Migrating;
                reason = Some(format!("migrating to {to}"));
            }
            Place::InDoubt { to } => {
                state = GuestState::InDoubt;
                reason = Some(format!("paused here after a migration to {to} that {to} did not confirm"));
            }
            _ => {}
        }
        Some(GuestStatus {
            name: g.spec.name.clone(),
            state,
            pid: s.as_ref().and_then(|s| s.pid),
            restarts: s.as_ref().map(|s| s.restarts).unwrap_or(0),
            uptime_s: s.as_ref().map(|s| s.since_s).unwrap_or(0.0),
            disks: g.spec.disks.iter().map(|d| d.alias.clone()).collect(),
            reason,
            runs_on,
            lease: self.lease_of(&g.spec.name),
            usage: None,
        })
    }

    /// The guests with a process here (running, starting, arriving, stopping) and the aliases
    /// of their disks: what a reload of the alias table must not take away.
    pub fn disks_in_use(&self, blade: &dyn Blade) -> Vec<(String, Vec<String>)> {
        self.guests
            .values()
            .filter(|g| {
                blade.state(&g.spec.name).is_some_and(|s| {
                    !matches!(
                        s,
                        crate::supervisor::ServiceState::Stopped
                            | crate::supervisor::ServiceState::Failed
                            | crate::supervisor::ServiceState::Exited
                    )
                })
            })
            .map(|g| (g.spec.name.clone(), g.spec.disks.iter().map(|d| d.alias.clone()).collect()))
            .collect()
    }

    pub fn guest_status(&self, blade: &dyn Blade) -> Vec<GuestStatus> {
        self.guests.values().filter_map(|g| self.status_of(g, blade)).collect()
    }

    /// `GET /v1/guests/<name>`: what a peer's owner check asks.
    pub fn guest_here(&self, name: &str, blade: &dyn Blade) -> GuestHere {
        GuestHere { node: self.node.clone(), guest: self.guests.get(name).and_then(|g| self.status_of(g, blade)) }
    }

    /// `GET /v1/capacity`: what a peer choosing a migration target asks.
    pub fn capacity(&self, blade: &dyn Blade) -> Capacity {
        Capacity {
            node: self.node.clone(),
            drained: self.drained.clone(),
            shutting_down: self.shutting_down,
            memory: blade.memory(),
            drained_nodes: self.drained_nodes(),
        }
    }

    /// An operator's read-only QMP query to a guest's QEMU, logged. Anything that changes QEMU
    /// (or reads host files: `human-monitor-command`, `migrate` to `exec:`, `blockdev-add`,
    /// `pmemsave`) is refused: it would be root on the blade.
    pub(super) fn qmp(&mut self, guest: &str, command: serde_json::Value, ticket: Ticket, blade: &dyn Blade) {
        let name = command["execute"].as_str().unwrap_or("");
        let r = if !crate::qemu::qmp::is_read_only(name) {
            Err(Refusal::forbidden(format!(
                "QMP command {:?} is not one of the read-only queries the API passes on ({})",
                crate::config::error::shorten(name, 64),
                crate::qemu::qmp::READ_ONLY.join(", ")
            )))
        } else if blade.state(guest).is_none() {
            Err(Refusal::not_found(format!("guest {guest} has no process on this blade")))
        } else {
            let shown = crate::config::error::shorten(&command.to_string(), 200);
            tracing::warn!(guest = %guest, command = %shown, "QMP query from an operator");
            self.effects.push(Effect::Qmp { guest: guest.to_string(), command, ticket });
            return;
        };
        self.reply(Some(ticket), r);
    }
}
