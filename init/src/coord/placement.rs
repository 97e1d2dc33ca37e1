//! Placing this blade's own guests (once their disks are up, they fit and, for a guest that may
//! run elsewhere, once the other blades say they do not run it), and operators' actions on a
//! guest. One owner per guest: a blade that cannot be asked is never taken as "not running".

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::owner::Verdict;
use super::{service_name, Blade, Coordinator, Effect, OwnerCheck, Place, ServiceKind, Ticket};
use crate::config::guest::GuestSpec;
use crate::proto::request::{Answer, Refusal};
use crate::proto::ServiceAction;
use crate::storage::LunState;
use crate::supervisor::ServiceState;

/// How long a guest refused because a peer could not be asked waits before asking again.
pub const OWNER_RETRY: Duration = Duration::from_secs(15);

/// Why this guest cannot run on a blade now (disks, memory), if it cannot.
pub fn cannot_run(g: &GuestSpec, blade: &dyn Blade) -> Option<String> {
    for d in &g.disks {
        match blade.lun(&d.alias) {
            None => return Some(format!("disk {} is not in the alias table", d.alias)),
            Some(LunState::Missing) => return Some(format!("waiting for disk {} (missing)", d.alias)),
            Some(_) => {}
        }
    }
    let total = blade.memory().total_mib;
    (g.memory_mib >= total).then(|| format!("needs {} MiB of memory; this blade has {total} MiB", g.memory_mib))
}

impl Coordinator {
    /// Whether placement has anything to look at: a change since it last looked, or an owner
    /// check to repeat.
    fn placement_due(&self, now: Instant) -> bool {
        self.dirty || self.guests.values().any(|g| matches!(g.check, OwnerCheck::RetryAt(t) if t <= now))
    }

    /// Places this blade's own guests that have no service and no place elsewhere yet.
    pub(super) fn place(&mut self, blade: &dyn Blade, now: Instant) {
        if !self.drain_known || self.shutting_down || !self.placement_due(now) {
            return;
        }
        self.dirty = false;
        let names: Vec<String> = self.guests.keys().cloned().collect();
        for name in names {
            self.place_one(&name, blade, now);
        }
    }

    fn place_one(&mut self, name: &str, blade: &dyn Blade, now: Instant) {
        let Some(g) = self.guests.get(name) else { return };
        if !self.is_home(g) || blade.state(name).is_some() || g.place != Place::Here {
            return;
        }
        let (spec, check) = (g.spec.clone(), g.check);
        if spec.autostart {
            if let Some(d) = &self.drained {
                let why = format!("this blade is drained ({d})");
                self.set_waiting(name, Some(why));
                return;
            }
            match check {
                OwnerCheck::Asking => return,
                OwnerCheck::RetryAt(t) if t > now => return,
                _ => {}
            }
        }
        if let Some(why) = cannot_run(&spec, blade).or_else(|| self.no_lease_yet()) {
            self.set_waiting(name, Some(why));
            return;
        }
        if !spec.autostart {
            // Defined here, started only by an operator (who goes through the owner check).
            self.set_waiting(name, None);
            self.effects.push(Effect::AddService { guest: name.to_string(), kind: ServiceKind::Defined });
            return;
        }
        self.ask_owners(name, false, None, blade, now);
    }

    /// Why no guest can take its lease yet, when the cluster has a lease area not joined.
    pub(super) fn no_lease_yet(&self) -> Option<String> {
        use crate::leases::Lockspace;
        match self.leases.as_ref()? {
            Lockspace::Joined => None,
            Lockspace::Joining => Some("waiting for this blade to join the lease area".into()),
            Lockspace::NotInitialised(why) => {
                Some(format!("the lease area is not initialised ({why}): bladevisor leases init"))
            }
            Lockspace::Failed(why) => Some(format!("the lease area cannot be joined: {why}")),
        }
    }

    /// Asks every other blade of the cluster (not only the guest's: another blade's
    /// configuration may differ) whether it runs the guest; with no other blade, it is free.
    fn ask_owners(&mut self, name: &str, force: bool, ticket: Option<Ticket>, blade: &dyn Blade, now: Instant) {
        let peers = self.peers();
        if peers.is_empty() {
            return self.owners_answered(name, Verdict::Free, force, ticket, blade, now);
        }
        let Some(g) = self.guests.get_mut(name) else { return };
        g.check = OwnerCheck::Asking;
        self.effects.push(Effect::AskOwners { guest: name.to_string(), peers, force, ticket });
    }

    /// Starts a guest here: adds its service, or starts the existing one.
    fn start_now(&mut self, name: &str, forced: bool, ticket: Option<Ticket>, blade: &dyn Blade) {
        self.set_place(name, Place::Here);
        self.set_waiting(name, None);
        if forced {
            warn!(guest = %name, "OPERATOR OVERRIDE: starting without the other blades' agreement");
        }
        let guest = name.to_string();
        if blade.state(name).is_some() {
            self.effects.push(Effect::Service { guest, action: ServiceAction::Start, ticket });
            return;
        }
        info!(guest = %name, "guest placed on this blade");
        self.effects.push(Effect::AddService { guest, kind: ServiceKind::Start });
        self.reply(ticket, Ok(Answer::done(format!("{}: start requested", service_name(name)))));
    }

    pub(super) fn owners_answered(
        &mut self,
        name: &str,
        verdict: Verdict,
        force: bool,
        ticket: Option<Ticket>,
        blade: &dyn Blade,
        now: Instant,
    ) {
        let Some(g) = self.guests.get_mut(name) else { return };
        g.check = OwnerCheck::Idle;
        let busy = Some(&g.place).filter(|p| !matches!(p, Place::Here | Place::Elsewhere { .. })).map(|p| p.describe());
        let refusal = match &verdict {
            _ if self.shutting_down => Refusal::conflict("the blade is shutting down"),
            // A migration began while the blades were being asked: it decides, not this check.
            _ if busy.is_some() => Refusal::conflict(format!("guest {name}: {}", busy.unwrap_or_default())),
            Verdict::Free => return self.start_now(name, false, ticket, blade),
            v if force => {
                warn!(guest = %name, "{}", v.explain(name));
                return self.start_now(name, true, ticket, blade);
            }
            Verdict::RunsOn { node, .. } => {
                // Definite: no retry; an operator's start asks again.
                let why = verdict.explain(name);
                warn!(guest = %name, "not started: {why}");
                self.set_waiting(name, None);
                self.set_place(name, Place::Elsewhere { node: node.clone(), why: why.clone() });
                Refusal::conflict(why)
            }
            Verdict::Unknown { .. } => {
                let why = verdict.explain(name);
                if let Some(g) = self.guest_mut(name) {
                    g.check = OwnerCheck::RetryAt(now + OWNER_RETRY);
                }
                self.set_waiting(name, Some(why.clone()));
                Refusal::conflict(why)
            }
        };
        self.reply(ticket, Err(refusal));
    }

    /// An operator's action on a guest; a refusal is returned, anything else answers `ticket`.
    pub(super) fn guest_action(
        &mut self,
        name: &str,
        action: ServiceAction,
        force: bool,
        ticket: Ticket,
        blade: &dyn Blade,
        now: Instant,
    ) -> Result<(), Refusal> {
        let g = self.guest(name)?;
        // A restart (or a kill, which the restart policy turns into one) of a copy that may run
        // elsewhere would make two.
        match (action, &g.place) {
            (_, Place::Outgoing { to, .. }) => {
                return Err(Refusal::conflict(format!("guest {name} is migrating to {to}; cancel that first")))
            }
            (ServiceAction::Kill, Place::InDoubt { to }) if force => {
                warn!(guest = %name, "OPERATOR OVERRIDE: the paused in-doubt copy is removed (it may run on {to})");
                self.effects.push(Effect::Discard(name.to_string()));
                self.set_place(name, Place::Here);
                self.reply(Some(ticket), Ok(Answer::done(format!("the paused copy of {name} here is removed"))));
                return Ok(());
            }
            (_, Place::InDoubt { to }) => {
                return Err(Refusal::conflict(format!(
                    "guest {name} is paused here in doubt after a migration to {to}: bladevisor resolve {name} \
                     (or kill --force to remove this copy)"
                )))
            }
            (ServiceAction::Kill, Place::Incoming { .. }) => {}
            (_, Place::Incoming { from, .. }) => {
                return Err(Refusal::conflict(format!("guest {name} is arriving from {from}; only kill applies")))
            }
            _ => {}
        }
        let state = blade.state(name);
        if action == ServiceAction::Start {
            if matches!(state, Some(ServiceState::Running | ServiceState::Starting)) {
                self.reply(Some(ticket), Ok(Answer::done(format!("{} already runs", service_name(name)))));
                return Ok(());
            }
            if let Some(why) = cannot_run(&g.spec, blade).or_else(|| self.no_lease_yet()) {
                return Err(Refusal::conflict(format!("guest {name} cannot start here: {why}")));
            }
            if let (Some(d), false) = (&self.drained, force) {
                return Err(Refusal::conflict(format!("this blade is drained ({d}); undrain it, or --force")));
            }
            self.ask_owners(name, force, Some(ticket), blade, now);
            return Ok(());
        }
        if state.is_none() {
            let why = match &g.place {
                Place::Elsewhere { why, .. } => why.clone(),
                _ => g.waiting.clone().unwrap_or_else(|| "it is not started".into()),
            };
            return Err(Refusal::conflict(format!("guest {name} has no process here: {why}")));
        }
        self.effects.push(Effect::Service { guest: name.to_string(), action, ticket: Some(ticket) });
        Ok(())
    }
}
