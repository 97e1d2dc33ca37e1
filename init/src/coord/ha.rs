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
use crate::leases::{LeaseEvent, LeaseState, Lockspace, KEEP_EVENTS};
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
        Some(self.describe_lease(self.lease_states.get(guest)?))
    }

    fn describe_lease(&self, state: &LeaseState) -> String {
        let node = |id: &u32| self.host_ids.get(id).cloned().unwrap_or_else(|| format!("host {id}"));
        match state {
            LeaseState::Free => "free".into(),
            LeaseState::Held { host_id, .. } if self.host_ids.get(host_id) == Some(&self.node) => "held here".into(),
            LeaseState::Held { host_id, live: true } => format!("held by {}", node(host_id)),
            LeaseState::Held { host_id, live: false } => format!("held by {}, which stopped renewing", node(host_id)),
            LeaseState::Unknown { why } => format!("unknown ({why})"),
        }
    }

    /// Keeps one lease event for status (the last [`KEEP_EVENTS`]).
    fn lease_event(&mut self, now: Instant, guest: Option<&str>, what: String) {
        if self.lease_events.len() == KEEP_EVENTS {
            self.lease_events.pop_front();
        }
        self.lease_events.push_back((now, guest.map(String::from), what));
    }

    /// The lease events, with their age at `now`, and the HA restarts made here.
    pub fn lease_events(&self, now: Instant) -> (u64, Vec<LeaseEvent>) {
        let events = self
            .lease_events
            .iter()
            .map(|(at, guest, what)| LeaseEvent {
                age_s: now.saturating_duration_since(*at).as_secs(),
                guest: guest.clone(),
                what: what.clone(),
            })
            .collect();
        (self.ha_restarts, events)
    }

    /// The lease keeper's word on the lockspace: a change is an event (joining it lets guests
    /// start; losing it means sanlock stops the guests holding leases here).
    pub(super) fn lockspace_is(&mut self, state: Lockspace, now: Instant) {
        let before = self.leases.replace(state.clone());
        if before.as_ref() == Some(&state) {
            return;
        }
        let what = match (&before, &state) {
            (Some(Lockspace::Joined), _) => format!(
                "left the lockspace: {} (sanlock stops every guest holding a lease here once it cannot renew)",
                state.describe()
            ),
            _ => format!("lockspace {}", state.describe()),
        };
        self.lease_event(now, None, what);
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
            let before = self.lease_states.insert(guest.clone(), state.clone());
            // Unknown is a probe that failed, not a change of hands: only known states count.
            let known = |s: &LeaseState| !matches!(s, LeaseState::Unknown { .. });
            if known(&state) && before.as_ref().is_none_or(|b| b != &state && known(b)) {
                let what = format!("lease {}", self.describe_lease(&state));
                self.lease_event(now, Some(&guest), what);
            }
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
        self.ha_restarts += 1;
        let what =
            format!("HA restart here: its lease is held by {dead}, which stopped renewing; started from its disk");
        self.lease_event(now, Some(guest), what);
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
