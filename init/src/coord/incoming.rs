//! Guests arriving by live migration: a paused QEMU listening for the stream, resumed when the
//! source says the stream is complete, removed when it is aborted, breaks or takes too long.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::placement::cannot_run;
use super::{Blade, Coordinator, Effect, Place, ServiceKind, Ticket};
use crate::migration::{is_capability_name, Direction, Outcome, Phase};
use crate::proto::request::{Answer, Listening, Refusal};
use crate::supervisor::ServiceState;

/// Memory an arriving guest must leave free on this blade besides its own.
pub const MEMORY_MARGIN_MIB: u64 = 64;

/// What a peer asks when it would send a guest here.
pub(super) struct Arrival<'a> {
    pub guest: &'a str,
    pub from: &'a str,
    pub caps: Vec<String>,
    /// The sender's release, for a refusal's words.
    pub release: Option<&'a str>,
}

impl Coordinator {
    /// A peer asks this blade to receive `guest`: start it paused, listening for its stream.
    pub(super) fn incoming(&mut self, a: Arrival<'_>, ticket: Ticket, blade: &dyn Blade, now: Instant) {
        let Arrival { guest, from, caps, release } = a;
        match self.accept_incoming(guest, from, &caps, release, blade) {
            Ok(ports) => {
                let id = self.new_migration(guest, Direction::In, from, now);
                let taken: Vec<u16> = self
                    .guests
                    .values()
                    .filter_map(|g| match g.place {
                        Place::Incoming { port, .. } => port,
                        _ => None,
                    })
                    .collect();
                let place = Place::Incoming { from: from.to_string(), port: None, since: now, migration: id };
                self.set_place(guest, place);
                self.set_waiting(guest, None);
                info!(guest = %guest, from = %from, "incoming migration: guest started paused");
                let guest = guest.to_string();
                self.effects.push(Effect::AddService { guest: guest.clone(), kind: ServiceKind::Incoming });
                self.effects.push(Effect::Listen { guest, from: from.to_string(), caps, ports, taken, ticket });
            }
            Err(r) => self.reply(Some(ticket), Err(r)),
        }
    }

    /// Whether this blade takes the guest now; the migration port range when it does.
    fn accept_incoming(
        &mut self,
        guest: &str,
        from: &str,
        caps: &[String],
        release: Option<&str>,
        blade: &dyn Blade,
    ) -> Result<(u16, u16), Refusal> {
        let node = self.node.clone();
        let g =
            self.guests.get(guest).ok_or_else(|| Refusal::not_found(format!("guest {guest} may not run on {node}")))?;
        // Only a blade of this cluster that may itself run the guest can hand it over.
        if from == node || !g.spec.may_run_on(from) {
            let blades: Vec<&str> = g.spec.blades().map(String::as_str).collect();
            return Err(Refusal::forbidden(format!(
                "{from:?} is not a blade guest {guest} may migrate from (its blades: {})",
                blades.join(", ")
            )));
        }
        if let Some(c) = caps.iter().find(|c| !is_capability_name(c)) {
            return Err(Refusal::invalid(format!("{c:?} is not a QEMU migration capability name")));
        }
        if self.shutting_down {
            return Err(Refusal::conflict(format!("{node} is shutting down")));
        }
        if let Some(d) = &self.drained {
            return Err(Refusal::conflict(format!("{node} is drained ({d})")));
        }
        // Before the source stops anything: a guest this QEMU cannot run stays where it is.
        if let Some(why) = blade.qemu_lacks(&g.spec.machine, &g.spec.cpu) {
            return Err(Refusal::conflict(format!(
                "guest {guest} needs machine type {} and CPU model {}: {node} (release {}) cannot take it, {why}; \
                 {from} runs release {}",
                g.spec.machine,
                g.spec.cpu,
                blade.release(),
                release.unwrap_or("(not said)")
            )));
        }
        if !matches!(g.place, Place::Here | Place::Elsewhere { .. }) {
            return Err(Refusal::conflict(format!(
                "guest {guest} already has a process on {node} ({})",
                g.place.describe()
            )));
        }
        let spec = g.spec.clone();
        if let Some(st) = blade.state(guest) {
            if matches!(
                st,
                ServiceState::Waiting
                    | ServiceState::Running
                    | ServiceState::Starting
                    | ServiceState::Stopping
                    | ServiceState::Backoff
            ) {
                return Err(Refusal::conflict(format!("guest {guest} already has a process on {node} ({st:?})")));
            }
        }
        if let Some(why) = cannot_run(&spec, blade).or_else(|| self.no_lease_yet()) {
            return Err(Refusal::conflict(format!("guest {guest} cannot run on {node}: {why}")));
        }
        let available = blade.memory().available_mib;
        if available < spec.memory_mib + MEMORY_MARGIN_MIB {
            return Err(Refusal::conflict(format!(
                "{node} has {available} MiB available; guest {guest} needs {} MiB",
                spec.memory_mib
            )));
        }
        let ports = self.settings.port_range().ok_or_else(|| Refusal::failed("no migration port range"))?;
        if blade.state(guest).is_some() {
            // A stopped copy of our own: make way for the arriving one.
            self.effects.push(Effect::Discard(guest.to_string()));
        }
        Ok((*ports.start(), *ports.end()))
    }

    fn incoming_id(&self, guest: &str) -> Option<u64> {
        match self.guests.get(guest).map(|g| &g.place) {
            Some(Place::Incoming { migration, .. }) => Some(*migration),
            _ => None,
        }
    }

    /// Removes an arriving guest's process and its place.
    pub(super) fn drop_incoming(&mut self, guest: &str, why: &str) {
        if let Some(id) = self.incoming_id(guest) {
            warn!(guest = %guest, "incoming migration dropped: {why}");
            self.set_place(guest, Place::Here);
            self.effects.push(Effect::Discard(guest.to_string()));
            if let Some(m) = self.migration_mut(id) {
                m.phase = Phase::Done;
                m.outcome = Some(Outcome::failed(Phase::Streaming, why, false));
            }
        }
    }

    pub(super) fn listening(&mut self, guest: &str, result: Result<u16, String>, ticket: Ticket) {
        let r = match (result, self.incoming_id(guest)) {
            (Ok(p), Some(id)) => {
                if let Some(Place::Incoming { port, .. }) = self.guest_mut(guest).map(|g| &mut g.place) {
                    *port = Some(p);
                }
                info!(guest = %guest, port = p, "incoming migration: listening");
                if let Some(m) = self.migration_mut(id) {
                    m.phase = Phase::Streaming;
                }
                Ok(Answer::Listening(Listening { guest: guest.to_string(), port: p }))
            }
            (Ok(_), None) => Err(Refusal::conflict(format!("guest {guest} is no longer arriving on {}", self.node))),
            (Err(e), _) => {
                self.drop_incoming(guest, &format!("cannot listen: {e}"));
                Err(Refusal::conflict(format!("{}: cannot listen for guest {guest}: {e}", self.node)))
            }
        };
        self.reply(Some(ticket), r);
    }

    /// Only the blade that sends a guest's stream may resume or abort its arrival here.
    fn sent_by(&self, guest: &str, by: &str) -> Result<(), Refusal> {
        match self.guests.get(guest).map(|g| &g.place) {
            Some(Place::Incoming { from, .. }) if from != by => Err(Refusal::forbidden(format!(
                "guest {guest} arrives from {from}, not {by}: only {from} may resume or abort it"
            ))),
            _ => Ok(()),
        }
    }

    pub(super) fn incoming_resume(&mut self, guest: &str, by: &str, ticket: Ticket) {
        if self.incoming_id(guest).is_none() {
            let r = Err(Refusal::conflict(format!("guest {guest} is not arriving on {}", self.node)));
            return self.reply(Some(ticket), r);
        }
        if let Err(r) = self.sent_by(guest, by) {
            return self.reply(Some(ticket), Err(r));
        }
        self.effects.push(Effect::Resume { guest: guest.to_string(), ticket });
    }

    pub(super) fn resumed(&mut self, guest: &str, result: Result<(), String>, ticket: Ticket) {
        let r = match (result, self.incoming_id(guest)) {
            (Ok(()), Some(id)) => {
                let from = match self.guests.get(guest).map(|g| &g.place) {
                    Some(Place::Incoming { from, .. }) => from.clone(),
                    _ => "?".into(),
                };
                self.set_place(guest, Place::Here);
                // From now on it is this blade's guest, started as any other.
                self.effects.push(Effect::Adopt(guest.to_string()));
                if let Some(m) = self.migration_mut(id) {
                    m.phase = Phase::Done;
                }
                info!(guest = %guest, from = %from, "incoming migration complete: the guest runs here");
                Ok(Answer::done(format!("guest {guest} runs on {}", self.node)))
            }
            (Ok(()), None) => Err(Refusal::conflict(format!("guest {guest} is no longer arriving on {}", self.node))),
            (Err(e), _) => {
                // Refused, and our copy goes: the source's is then the only one.
                self.drop_incoming(guest, &format!("cannot resume: {e}"));
                Err(Refusal::conflict(format!("{} cannot resume guest {guest}: {e}", self.node)))
            }
        };
        self.reply(Some(ticket), r);
    }

    pub(super) fn incoming_abort(&mut self, guest: &str, by: &str, ticket: Ticket) {
        if let Err(r) = self.sent_by(guest, by) {
            return self.reply(Some(ticket), Err(r));
        }
        let msg = if self.incoming_id(guest).is_none() {
            format!("no incoming process for guest {guest}")
        } else {
            self.drop_incoming(guest, "aborted by the source");
            format!("incoming guest {guest} removed")
        };
        self.reply(Some(ticket), Ok(Answer::done(msg)));
    }

    /// Arriving guests whose QEMU ended (a broken stream ends it) or that waited too long.
    pub(super) fn watch_incoming(&mut self, blade: &dyn Blade, now: Instant) {
        let limit = crate::config::values::secs(self.settings.timeout_s) + Duration::from_secs(60);
        let ended: Vec<(String, String)> = self
            .guests
            .values()
            .filter_map(|g| match &g.place {
                Place::Incoming { since, .. } => match blade.state(&g.spec.name) {
                    Some(ServiceState::Exited | ServiceState::Failed | ServiceState::Stopped) | None => {
                        Some((g.spec.name.clone(), "its QEMU ended (the stream broke or was refused)".to_string()))
                    }
                    _ if now.saturating_duration_since(*since) > limit => {
                        Some((g.spec.name.clone(), format!("not resumed within {} s", limit.as_secs())))
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
}
