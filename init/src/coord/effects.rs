//! What the coordinator asks of the edge ([`Effect`]) and what the edge and its workers tell it
//! back ([`Report`]): the whole vocabulary between the pure decisions and the blade.

use super::owner::Verdict;
use super::Ticket;
use crate::migration::{Outcome, Phase, Progress};
use crate::proto::request::Reply;
use crate::proto::{Capacity, ServiceAction};

/// How a guest's service is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// Defined and not started (not autostarted: an operator starts it).
    Defined,
    /// Started now.
    Start,
    /// Started paused, waiting for a migration stream; never restarted.
    Incoming,
}

/// What the edge carries out for the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Reply(Ticket, Reply),
    /// Add the guest's service (and follow its console).
    AddService {
        guest: String,
        kind: ServiceKind,
    },
    /// An action on the guest's existing service; the supervisor's answer is the reply.
    Service {
        guest: String,
        action: ServiceAction,
        ticket: Option<Ticket>,
    },
    /// Remove the guest's service, stopping its process without applying its restart policy.
    Discard(String),
    /// An arrived guest is this blade's now: its service's next starts are normal ones (not
    /// paused for a stream, its lease acquired), with the guest's own restart policy.
    Adopt(String),
    /// Ask `peers` whether they run the guest; answered by [`Report::OwnersAnswered`].
    AskOwners {
        guest: String,
        peers: Vec<String>,
        force: bool,
        ticket: Option<Ticket>,
    },
    /// Drive the guest's migration to `to`; progress and outcome come back as reports.
    MigrateOut {
        guest: String,
        to: String,
        migration: u64,
        bandwidth_mbps: Option<f64>,
    },
    CancelMigration(u64),
    /// Open the incoming guest's stream listener on a port of `ports` not in `taken`.
    Listen {
        guest: String,
        /// The blade that will send the stream: the only one let in.
        from: String,
        caps: Vec<String>,
        ports: (u16, u16),
        taken: Vec<u16>,
        ticket: Ticket,
    },
    /// Run the arrived guest (`cont` once its stream completed).
    Resume {
        guest: String,
        ticket: Ticket,
    },
    /// Ask every blade in `peers` again about a guest in doubt after a migration to `to`, and
    /// keep one copy.
    Resolve {
        guest: String,
        to: String,
        peers: Vec<String>,
        ticket: Ticket,
    },
    /// Tell every other blade this one is drained (or not).
    TellDrained(bool),
    /// Ask the other blades whether they remember this one as drained.
    AskDrain,
    /// Ask these blades for their capacity (an evacuation choosing targets).
    AskCapacity(Vec<String>),
    /// Read who holds these guests' leases (answered by [`Report::LeaseStates`]).
    ProbeLeases(Vec<String>),
    /// A read-only QMP query to the guest's QEMU.
    Qmp {
        guest: String,
        command: serde_json::Value,
        ticket: Ticket,
    },
}

/// What workers and the edge report.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    OwnersAnswered {
        guest: String,
        verdict: Verdict,
        force: bool,
        ticket: Option<Ticket>,
    },
    Listening {
        guest: String,
        result: Result<u16, String>,
        ticket: Ticket,
    },
    Resumed {
        guest: String,
        result: Result<(), String>,
        ticket: Ticket,
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
    /// What the other blades remember of this blade's drain (asked at boot).
    DrainKnown(Option<String>),
    Capacities(Vec<(String, Result<Capacity, String>)>),
    /// An in-doubt guest, settled: Ok(None) resumed here, Ok(Some(node)) runs on that blade.
    Resolved {
        guest: String,
        result: Result<Option<String>, String>,
        ticket: Ticket,
    },
    /// Where this blade stands in the cluster's lease area.
    Leases(crate::leases::Lockspace),
    /// Who holds the leases of these guests.
    LeaseStates(Vec<(String, crate::leases::LeaseState)>),
    /// The edge could not add a guest's service.
    ServiceRefused {
        guest: String,
        why: String,
    },
}
