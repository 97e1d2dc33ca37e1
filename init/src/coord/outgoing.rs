//! Migrations from this blade: starting one, its outcome, an operator's cancel, and settling a
//! guest left in doubt (the stream completed, the destination did not confirm).

use std::time::Instant;

use tracing::{error, info, warn};

use super::{Blade, Coordinator, Effect, Place, Ticket};
use crate::migration::{Direction, Ending, Outcome, Phase};
use crate::proto::request::{Answer, Refusal};
use crate::supervisor::ServiceState;

impl Coordinator {
    /// Starts a live migration of `guest` to `to`; its id, or why not.
    pub(super) fn migrate(
        &mut self,
        guest: &str,
        to: &str,
        bandwidth_mbps: Option<f64>,
        blade: &dyn Blade,
        now: Instant,
    ) -> Result<u64, Refusal> {
        let g = self
            .guests
            .get(guest)
            .ok_or_else(|| Refusal::not_found(format!("no guest named {guest:?} on this blade")))?;
        if self.shutting_down {
            return Err(Refusal::conflict("the blade is shutting down"));
        }
        if to == self.node || !g.spec.may_run_on(to) {
            let allowed: Vec<&str> = g.spec.blades().filter(|n| **n != self.node).map(String::as_str).collect();
            return Err(Refusal::conflict(format!(
                "guest {guest} may not migrate to {to} (its blades besides this one: {})",
                allowed.join(", ")
            )));
        }
        if g.place != Place::Here {
            return Err(Refusal::conflict(format!("guest {guest} cannot migrate now: {}", g.place.describe())));
        }
        if blade.state(guest) != Some(ServiceState::Running) {
            return Err(Refusal::conflict(format!("guest {guest} does not run on this blade")));
        }
        if let Some(Err(e)) = self.nodes.get(to) {
            return Err(Refusal::conflict(format!("cannot migrate to {to}: {e}")));
        }
        let id = self.new_migration(guest, Direction::Out, to, now);
        self.set_place(guest, Place::Outgoing { to: to.to_string(), migration: id });
        info!(guest = %guest, to = %to, "live migration requested");
        self.effects.push(Effect::MigrateOut {
            guest: guest.to_string(),
            to: to.to_string(),
            migration: id,
            bandwidth_mbps,
        });
        Ok(id)
    }

    pub(super) fn migration_done(&mut self, guest: &str, id: u64, outcome: Outcome, blade: &dyn Blade, now: Instant) {
        let to = match self.guests.get(guest).map(|g| &g.place) {
            Some(Place::Outgoing { to, .. }) => to.clone(),
            _ => "?".into(),
        };
        match outcome.result {
            Ending::Completed => {
                info!(guest = %guest, to = %to, total_ms = outcome.total_ms, downtime_ms = outcome.downtime_ms, bytes = outcome.transferred_bytes, "migration {}", outcome.summary());
                // The destination runs it: the paused source process goes, without its policy.
                self.effects.push(Effect::Discard(guest.to_string()));
                self.set_place(guest, Place::Elsewhere { node: to.clone(), why: format!("migrated to {to}") });
            }
            Ending::Failed => {
                warn!(guest = %guest, to = %to, "migration {}", outcome.summary());
                self.set_place(guest, Place::Here);
            }
            Ending::InDoubt => {
                error!(guest = %guest, to = %to, "migration {}", outcome.summary());
                self.set_place(guest, Place::InDoubt { to: to.clone() });
            }
        }
        self.migration_stats.record(&outcome);
        self.evacuation_migration_done(id, &outcome);
        if let Some(m) = self.migration_mut(id) {
            m.phase = Phase::Done;
            m.outcome = Some(outcome);
        }
        self.pump_evacuation(blade, now);
    }

    pub(super) fn migrate_cancel(&mut self, guest: &str, ticket: Ticket) {
        let r = match self.guests.get(guest).map(|g| &g.place) {
            Some(Place::Outgoing { to, migration }) => {
                info!(guest = %guest, to = %to, "migration cancel requested by operator");
                let msg = format!("cancelling the migration of {guest} to {to}");
                self.effects.push(Effect::CancelMigration(*migration));
                Ok(Answer::done(msg))
            }
            _ => Err(Refusal::conflict(format!("guest {guest} is not migrating from this blade"))),
        };
        self.reply(Some(ticket), r);
    }

    /// Settles a guest left paused here by a migration its destination did not confirm: asks
    /// the destination again (the edge does, and keeps one copy).
    pub(super) fn resolve(&mut self, guest: &str, ticket: Ticket) {
        let r = match self.guests.get(guest).map(|g| &g.place) {
            Some(Place::InDoubt { to }) => match self.nodes.get(to) {
                Some(Err(e)) => Err(Refusal::conflict(e.clone())),
                None => Err(Refusal::conflict(format!("{to} is not in [nodes]"))),
                Some(Ok(())) => {
                    info!(guest = %guest, to = %to, "resolving an in-doubt migration: asking {to} again");
                    let (guest, to, peers) = (guest.to_string(), to.clone(), self.peers());
                    self.effects.push(Effect::Resolve { guest, to, peers, ticket });
                    return;
                }
            },
            _ => Err(Refusal::conflict(format!("guest {guest} is not in doubt on this blade"))),
        };
        self.reply(Some(ticket), r);
    }

    pub(super) fn resolved(&mut self, guest: &str, result: Result<Option<String>, String>, ticket: Ticket) {
        let to = match self.guests.get(guest).map(|g| &g.place) {
            Some(Place::InDoubt { to }) => to.clone(),
            _ => "?".into(),
        };
        let r = match result {
            Ok(None) => {
                warn!(guest = %guest, to = %to, "in doubt resolved: no other blade has a copy; resumed here");
                self.set_place(guest, Place::Here);
                Ok(Answer::done(format!("guest {guest} runs here again ({to} has no copy)")))
            }
            Ok(Some(node)) => {
                warn!(guest = %guest, to = %to, "in doubt resolved: {node} runs it; the paused copy here goes");
                self.effects.push(Effect::Discard(guest.to_string()));
                self.set_place(guest, Place::Elsewhere { node: node.clone(), why: format!("migrated to {to}") });
                Ok(Answer::done(format!("guest {guest} runs on {node}; the paused copy here is removed")))
            }
            Err(e) => Err(Refusal::conflict(format!("guest {guest} stays paused here: {e}"))),
        };
        self.reply(Some(ticket), r);
    }
}
