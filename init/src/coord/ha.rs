//! HA restart: a guest with `ha = true` whose blade died is started again, from its disk, by
//! one of its other blades. The lease is the lock: each of the guest's blades probes who holds
//! it; while it is held by a blade that stopped renewing its lockspace (sanlock: DEAD, so its
//! QEMUs are gone or the watchdog reset it), the guest's blades try in their configuration order
//! (`node`, then `migrate-to`), each waiting its turn; the first whose `lease-exec` acquires the
//! lease runs it, the others' acquire fails. A lease that was released (the guest was stopped,
//! or migrated) is free, not dead: such a guest stays down.

use std::time::{Duration, Instant};

use tracing::warn;

use super::{Blade, Coordinator, Effect, Place, ServiceKind};
use crate::leases::{LeaseState, Lockspace};
use crate::supervisor::ServiceState;

/// How often this blade reads who holds its `ha` guests' leases.
pub const PROBE: Duration = Duration::from_secs(5);
/// How long each blade waits, per place in a guest's blade order, before it tries the lease of
/// a guest whose blade died (so that the guest's home gets the first chance, and so on).
pub const STAGGER: Duration = Duration::from_secs(10);

impl Coordinator {
    fn ha_guests(&self) -> Vec<String> {
        self.guests.values().filter(|g| g.spec.ha).map(|g| g.spec.name.clone()).collect()
    }

    /// Asks who holds the `ha` guests' leases, every [`PROBE`], once the lockspace is joined.
    pub(super) fn probe_leases(&mut self, now: Instant) {
        if self.leases != Some(Lockspace::Joined) || self.shutting_down || self.next_probe.is_some_and(|t| t > now) {
            return;
        }
        let guests = self.ha_guests();
        if guests.is_empty() {
            return;
        }
        self.next_probe = Some(now + PROBE);
        self.effects.push(Effect::ProbeLeases(guests));
    }

    /// What the lease LUN says of each guest's lease, as `status` shows it.
    pub fn lease_of(&self, guest: &str) -> Option<String> {
        let node = |id: &u32| self.host_ids.get(id).cloned().unwrap_or_else(|| format!("host {id}"));
        Some(match self.lease_states.get(guest)? {
            LeaseState::Free => "free".into(),
            LeaseState::Held { host_id, .. } if self.host_ids.get(host_id) == Some(&self.node) => "held here".into(),
            LeaseState::Held { host_id, live: true } => format!("held by {}", node(host_id)),
            LeaseState::Held { host_id, live: false } => format!("held by {}, which stopped renewing", node(host_id)),
            LeaseState::Unknown { why } => format!("unknown ({why})"),
        })
    }

    /// The probe's answer: a guest whose lease is held by a dead blade is started here when it
    /// is this blade's turn.
    pub(super) fn lease_states_known(&mut self, states: Vec<(String, LeaseState)>, blade: &dyn Blade, now: Instant) {
        for (guest, state) in states {
            let dead = match &state {
                LeaseState::Held { host_id, live: false } => {
                    self.host_ids.get(host_id).filter(|n| **n != self.node).cloned()
                }
                _ => None,
            };
            self.lease_states.insert(guest.clone(), state);
            match dead {
                Some(node) => self.maybe_restart(&guest, &node, blade, now),
                None => {
                    self.dead_seen.remove(&guest);
                }
            }
        }
    }

    fn maybe_restart(&mut self, guest: &str, dead: &str, blade: &dyn Blade, now: Instant) {
        let Some(g) = self.guests.get(guest) else { return };
        let busy = matches!(g.place, Place::Incoming { .. } | Place::Outgoing { .. } | Place::InDoubt { .. });
        // A copy here that is up or on its way up is left alone; one that ended (a failed
        // start, a fenced QEMU) is started again.
        let state = blade.state(guest);
        let up =
            state.is_some_and(|s| !matches!(s, ServiceState::Failed | ServiceState::Exited | ServiceState::Stopped));
        if busy || up || self.drained.is_some() || self.shutting_down {
            return;
        }
        let rank = g.spec.blades().position(|n| *n == self.node).unwrap_or(0) as u32;
        let seen = *self.dead_seen.entry(guest.to_string()).or_insert(now);
        if now < seen + STAGGER * rank {
            return;
        }
        if let Some(why) = super::placement::cannot_run(&g.spec, blade) {
            self.set_waiting(guest, Some(format!("HA restart waits: {why}")));
            return;
        }
        warn!(guest = %guest, dead = %dead, "HA restart: its lease is held by {dead}, which stopped renewing; starting it here from its disk");
        self.dead_seen.remove(guest);
        self.set_place(guest, Place::Here);
        self.set_waiting(guest, None);
        if let Some(g) = self.guests.get_mut(guest) {
            g.check = super::OwnerCheck::Idle;
        }
        let guest = guest.to_string();
        if state.is_some() {
            // Whatever that service was started as before (an arrival, a refused start), this
            // one is a plain cold start holding the lease.
            self.effects.push(Effect::Discard(guest.clone()));
        }
        self.effects.push(Effect::AddService { guest, kind: ServiceKind::Start });
    }
}
