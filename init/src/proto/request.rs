//! Requests, by who may make them, and their typed answers and refusals. Inside the process they
//! travel as these types; only the HTTP layer turns them into URLs, JSON and status codes.

use serde::{Deserialize, Serialize};

use super::{Capacity, GuestStatus, PowerAction, ServiceAction, Status};
use crate::migration::Evacuation;

/// Reads anyone who can reach the blade may make: nothing in them is private.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Status,
    /// The status as Prometheus text (rendered by the HTTP layer).
    Metrics,
    /// One guest's state on this blade: what a peer's owner check asks.
    Guest(String),
    /// Drain and memory: what a blade choosing a migration target asks.
    Capacity,
}

/// What an operator asks: the root-only control socket, or the network with the token.
#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    Power(PowerAction),
    Service {
        name: String,
        action: ServiceAction,
    },
    /// An action on a guest; `force` starts it even where another blade may run it.
    Guest {
        name: String,
        action: ServiceAction,
        force: bool,
    },
    /// Live-migrate a guest from this blade to `to`, optionally capped (Mbit/s).
    Migrate {
        guest: String,
        to: String,
        bandwidth_mbps: Option<f64>,
    },
    MigrateCancel(String),
    /// Settle a guest left in doubt by a migration: ask its destination again, keep one copy.
    Resolve(String),
    /// Drain this blade and migrate every guest off it.
    Evacuate {
        parallel: Option<usize>,
    },
    Undrain,
    /// Every guest of the cluster and where it runs, asked of every blade at once.
    ClusterGuests,
    /// Type `data` on a guest's console, as `session` (one session types at a time); `who` is
    /// filled in by the API from the caller's credentials, never taken from the request.
    ConsoleInput {
        name: String,
        session: String,
        who: String,
        data: Vec<u8>,
    },
    /// `session` stops typing on the guest's console.
    ConsoleDetach {
        name: String,
        session: String,
    },
    /// The blade's recent log entries after `since`, those about a service or a guest if asked.
    Logs {
        since: u64,
        service: Option<String>,
        guest: Option<String>,
    },
    /// One read-only QMP query to a guest's QEMU (the body of the call).
    GuestQmp {
        guest: String,
        command: serde_json::Value,
    },
    /// A guest's console from `offset` on (private: it may show a login).
    Console {
        name: String,
        offset: u64,
    },
    /// 4 KiB of a LUN through its map, bypassing the page cache (served by the HTTP layer).
    ReadLun {
        alias: String,
        offset: u64,
    },
    /// Re-read the alias table and apply it (rescan, reconfigure); `all`: on every blade of the
    /// cluster, this one asking the others.
    StorageReload {
        all: bool,
    },
    /// Rescan every SCSI host (FC ports Online only), nothing else.
    StorageRescan,
    /// Write the lease area's lockspace and guest leases (refused on an initialised area unless
    /// forced).
    LeasesInit {
        force: bool,
    },
    /// Boot the release served at `base_url` (an `out/` folder of `image/build`): fetch and
    /// verify it, evacuate, then kexec into it; `undrain`: the new release undrains the blade
    /// once healthy; `stop_guests`: guests that cannot move are stopped instead of the upgrade
    /// refused.
    Upgrade {
        base_url: String,
        undrain: bool,
        stop_guests: bool,
    },
}

/// What another blade of the cluster asks (with the cluster's token).
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// Start this guest paused, listening for its migration stream from `from`, which runs
    /// `release` (older blades do not say).
    Incoming { guest: String, from: String, caps: Vec<String>, release: Option<String> },
    /// The stream is complete: run the guest.
    IncomingResume { guest: String, from: String },
    /// The migration failed: remove the incoming process.
    IncomingAbort { guest: String, from: String },
    /// `node` is drained (or no longer).
    Drained { node: String, drained: bool },
}

/// Any request, by audience.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Read(Read),
    Operator(Operator),
    Peer(Peer),
}

impl Peer {
    /// The blade this call says it comes from, where it names one.
    pub fn from_node(&self) -> Option<&str> {
        match self {
            Peer::Incoming { from, .. } | Peer::IncomingResume { from, .. } | Peer::IncomingAbort { from, .. } => {
                Some(from)
            }
            Peer::Drained { node, .. } => Some(node),
        }
    }
}

impl Request {
    /// Whether the network listener needs the cluster's token for it (operators' and peers'
    /// calls; every read of something private is an operator's call).
    pub fn needs_token(&self) -> bool {
        !matches!(self, Request::Read(_))
    }
}

/// A migration this blade started (`POST /v1/guests/<name>/migrate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStarted {
    pub ok: String,
    pub id: u64,
}

/// An evacuation this blade started: the guests it will move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvacuationStarted {
    pub ok: String,
    pub guests: Option<Evacuation>,
}

/// An incoming guest's QEMU listens for its stream on `port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listening {
    pub guest: String,
    pub port: u16,
}

/// A piece of a guest's console, and the offset to ask from next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleText {
    pub guest: String,
    pub next: u64,
    pub text: String,
}

/// `GET /v1/guests/<name>`: the guest on this blade, or null when it has no process or place here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestHere {
    pub node: String,
    pub guest: Option<GuestStatus>,
}

/// A QMP query's answer, as QEMU gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpReturn {
    #[serde(rename = "return")]
    pub value: serde_json::Value,
}

/// A message for the operator: `{"ok": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub ok: String,
}

/// What a request is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Status(Box<Status>),
    Done(String),
    MigrationStarted(MigrationStarted),
    EvacuationStarted(EvacuationStarted),
    Listening(Listening),
    Console(ConsoleText),
    Qmp(QmpReturn),
    Guest(GuestHere),
    Capacity(Capacity),
    Reloaded(Box<crate::storage::reload::ReloadReport>),
    ReloadedAll(ReloadedAll),
    Rescanned(Rescanned),
    ClusterGuests(super::cluster::ClusterGuests),
}

/// `reload-aliases --all`: each blade's outcome (this one's first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadedAll {
    pub ok: String,
    pub blades: Vec<BladeReload>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BladeReload {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::storage::reload::ReloadReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `bladevisor logs`: a page of entries, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsPage {
    pub entries: Vec<crate::logging::ring::Entry>,
    pub next: u64,
    /// Lines the remote collector did not get (it was down or slow) since boot.
    #[serde(default)]
    pub remote_dropped: u64,
}

/// `bladevisor rescan`: each host's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rescanned {
    pub ok: String,
    pub scan: crate::storage::rescan::ScanReport,
}

impl Answer {
    pub fn done(msg: impl Into<String>) -> Answer {
        Answer::Done(msg.into())
    }

    /// The answer's JSON document (the wire format since the first release).
    pub fn to_json(&self) -> String {
        let r = match self {
            Answer::Status(s) => serde_json::to_string(s),
            Answer::Done(m) => serde_json::to_string(&Done { ok: m.clone() }),
            Answer::MigrationStarted(m) => serde_json::to_string(m),
            Answer::EvacuationStarted(e) => serde_json::to_string(e),
            Answer::Listening(l) => serde_json::to_string(l),
            Answer::Console(c) => serde_json::to_string(c),
            Answer::Qmp(q) => serde_json::to_string(q),
            Answer::Guest(g) => serde_json::to_string(g),
            Answer::Capacity(c) => serde_json::to_string(c),
            Answer::Reloaded(r) => serde_json::to_string(r),
            Answer::ReloadedAll(r) => serde_json::to_string(r),
            Answer::Rescanned(r) => serde_json::to_string(r),
            Answer::ClusterGuests(c) => serde_json::to_string(c),
        };
        r.unwrap_or_else(|e| format!("{{\"error\":\"cannot render the answer: {e}\"}}"))
    }
}

/// Why a request is refused, in the domain's words; the HTTP layer picks the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The request is malformed (a bad argument).
    Invalid,
    /// The caller may not do this (not a blade of the cluster, not a read-only query).
    Forbidden,
    /// No such guest, service, console or migration here.
    NotFound,
    /// Not now: the guest or the blade is in a state that does not allow it.
    Conflict,
    /// The work was attempted and failed (QMP, the alias table).
    Failed,
    /// The blade is busy or its main loop did not answer.
    Unavailable,
}

/// A refused request: why, and a message for the operator that names the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub why: Why,
    pub message: String,
}

impl Refusal {
    pub fn new(why: Why, message: impl Into<String>) -> Refusal {
        Refusal { why, message: message.into() }
    }
    pub fn invalid(m: impl Into<String>) -> Refusal {
        Refusal::new(Why::Invalid, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Refusal {
        Refusal::new(Why::Forbidden, m)
    }
    pub fn not_found(m: impl Into<String>) -> Refusal {
        Refusal::new(Why::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Refusal {
        Refusal::new(Why::Conflict, m)
    }
    pub fn failed(m: impl Into<String>) -> Refusal {
        Refusal::new(Why::Failed, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Refusal {
        Refusal::new(Why::Unavailable, m)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What every request gets back.
pub type Reply = Result<Answer, Refusal>;
