//! Live migration between blades. The source blade's supervisor drives QEMU's own migration
//! (QMP `migrate`) to a destination blade, whose supervisor started the guest paused with
//! `-incoming defer` when asked over the authenticated API. Both sides are written against
//! small traits ([`Vm`], [`Peer`], [`Clock`]) so the state machines are tested with recorded QMP
//! transcripts and injected failures; PID 1 wires them to real QMP sockets and HTTP.
//!
//! The rule that matters: the source quits its QEMU only after the destination has confirmed
//! the guest runs there. Before that point any failure cancels, resumes the guest on the source
//! and removes the destination's process; after it, nothing resumes the source on a guess.

pub mod dest;
pub mod source;
pub mod tls;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::config::migration::{is_capability_name, valid_bandwidth, Settings, BANDWIDTH_RANGE, MAX_PARALLEL};

/// Mbit/s to the bytes per second QEMU's `max-bandwidth` takes.
pub fn bytes_per_s(mbps: f64) -> u64 {
    (mbps * 1_000_000.0 / 8.0) as u64
}

/// `migrate-set-capabilities` arguments turning each of `caps` on.
pub fn caps_arg(caps: &[String]) -> Value {
    serde_json::json!({ "capabilities": caps.iter().map(|c| serde_json::json!({"capability": c, "state": true})).collect::<Vec<_>>() })
}

/// A guest's QEMU, as the migration code drives it (QMP in production, a transcript in tests).
pub trait Vm {
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String>;
    /// QMP events received since the last call.
    fn take_events(&mut self) -> Vec<(String, Value)> {
        vec![]
    }
}

impl Vm for crate::qemu::qmp::Qmp {
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        crate::qemu::qmp::Qmp::execute(self, cmd, args)
    }
    fn take_events(&mut self) -> Vec<(String, Value)> {
        std::mem::take(&mut self.events)
    }
}

/// Time, for timeouts and polling (a fake one in tests).
pub trait Clock {
    fn elapsed(&self) -> Duration;
    fn sleep(&mut self, d: Duration);
}

pub struct RealClock(std::time::Instant);

impl RealClock {
    pub fn start() -> Self {
        RealClock(std::time::Instant::now())
    }
}

impl Clock for RealClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// How a peer's refusal differs from a peer that could not be asked: only a clear answer lets
/// the source resume a guest it has already handed over.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerError {
    /// The peer answered: no.
    Refused(String),
    /// No answer (network, timeout, the peer is down).
    Unreachable(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Refused(m) => write!(f, "refused: {m}"),
            PeerError::Unreachable(m) => write!(f, "unreachable: {m}"),
        }
    }
}

/// The guest's storage lease as the source's QEMU holds it (sanlock), handed over at
/// switchover: released once the source is paused for good, so the destination can take it
/// before it runs the guest; taken back (only if nobody took it) before the source may resume.
pub trait Lease {
    fn release(&mut self) -> Result<(), String>;
    /// Takes the lease, only if nobody holds it.
    fn acquire(&mut self) -> Result<(), String>;
}

/// A cluster without a lease area.
pub struct NoLease;

impl Lease for NoLease {
    fn release(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn acquire(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// The destination blade, as the source's migration sees it.
pub trait Peer {
    /// Start the guest paused, listening for the stream; answers the port.
    fn prepare(&mut self, guest: &str, caps: &[String]) -> Result<u16, PeerError>;
    /// The stream is complete: run the guest and confirm it runs.
    fn resume(&mut self, guest: &str) -> Result<(), PeerError>;
    /// Remove the destination's process (best effort; a failed stream ends it anyway).
    fn abort(&mut self, guest: &str) -> Result<(), PeerError>;
}

/// Where a migration stands, for the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Preparing,
    Streaming,
    Resuming,
    Done,
}

/// Progress of the RAM stream, from `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub status: String,
    pub percent: f64,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    pub mbps: f64,
    pub downtime_limit_ms: u64,
    pub passes: u64,
}

impl Progress {
    pub fn from_query(q: &Value) -> Progress {
        let ram = &q["ram"];
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let (total, remaining) = (n(&ram["total"]), n(&ram["remaining"]));
        Progress {
            status: q["status"].as_str().unwrap_or("").to_string(),
            percent: if total > 0 { 100.0 * (total - remaining.min(total)) as f64 / total as f64 } else { 0.0 },
            transferred_bytes: n(&ram["transferred"]),
            remaining_bytes: remaining,
            total_bytes: total,
            mbps: ram["mbps"].as_f64().unwrap_or(0.0),
            downtime_limit_ms: 0,
            passes: n(&ram["dirty-sync-count"]),
        }
    }
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// The guest runs on the destination; the source's process is gone.
    Completed,
    /// The guest still runs on the source (resumed there if it had been paused).
    Failed,
    /// The stream completed but the destination did not confirm: the guest is paused on the
    /// source and may run on the destination. Nothing was resumed; an operator must look.
    InDoubt,
}

/// The result of one migration: logged, and kept in the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub result: Ending,
    /// Why it failed, or what is in doubt.
    pub error: Option<String>,
    /// Where it failed: preparing, streaming or resuming.
    pub phase: Phase,
    /// Whether the guest runs on the source after a failure.
    pub resumed_on_source: bool,
    /// Operator's command to the destination confirming it runs, in ms.
    pub total_ms: u64,
    /// QEMU's own measure of the stream (`total-time`) and of the pause (`downtime`).
    pub qemu_total_ms: u64,
    pub downtime_ms: u64,
    pub transferred_bytes: u64,
}

impl Outcome {
    /// A failure, before any of QEMU's figures exist.
    pub fn failed(phase: Phase, error: impl Into<String>, resumed_on_source: bool) -> Outcome {
        Outcome {
            result: Ending::Failed,
            error: Some(error.into()),
            phase,
            resumed_on_source,
            total_ms: 0,
            qemu_total_ms: 0,
            downtime_ms: 0,
            transferred_bytes: 0,
        }
    }

    pub fn summary(&self) -> String {
        match self.result {
            Ending::Completed => format!(
                "completed in {:.1} s (QEMU stream {:.1} s), downtime {} ms, {:.1} MiB sent",
                self.total_ms as f64 / 1000.0,
                self.qemu_total_ms as f64 / 1000.0,
                self.downtime_ms,
                self.transferred_bytes as f64 / 1048576.0
            ),
            Ending::Failed => format!(
                "failed while {}: {}; the guest {} on the source",
                format!("{:?}", self.phase).to_lowercase(),
                self.error.as_deref().unwrap_or("?"),
                if self.resumed_on_source { "runs" } else { "does NOT run" }
            ),
            Ending::InDoubt => format!("IN DOUBT: {}", self.error.as_deref().unwrap_or("?")),
        }
    }
}

/// Which way a migration goes, seen from this blade (`out` and `in` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From this blade.
    Out,
    /// To this blade.
    In,
}

/// One migration in `/v1/status`: from here (`out`) or to here (`in`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Unique on this blade since boot.
    pub id: u64,
    pub guest: String,
    pub direction: Direction,
    /// The other blade.
    pub peer: String,
    pub phase: Phase,
    pub progress: Option<Progress>,
    pub outcome: Option<Outcome>,
    /// Seconds since it began.
    pub age_s: f64,
}

/// QEMU as a recorded transcript, for the migration tests of both sides.
/// An evacuation: every guest of a blade migrated off it, each to a blade it may run on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evacuation {
    pub done: bool,
    pub guests: Vec<EvacuationItem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvacuationItem {
    pub guest: String,
    /// The blade chosen, when one could be.
    pub to: Option<String>,
    /// Its migration's id in `migrations`.
    pub migration: Option<u64>,
    /// Set when it is over: whether it left, and how it went.
    pub moved: Option<bool>,
    pub result: Option<String>,
}

#[cfg(test)]
pub mod testing {
    use super::Vm;
    use serde_json::Value;
    use std::collections::VecDeque;

    /// QEMU as a recorded transcript: each expected command with its answer.
    pub struct Transcript {
        pub steps: VecDeque<(&'static str, Result<Value, String>)>,
        pub seen: Vec<(String, Value)>,
    }

    impl Transcript {
        pub fn new(steps: Vec<(&'static str, Result<Value, String>)>) -> Self {
            Transcript { steps: steps.into(), seen: vec![] }
        }
        pub fn commands(&self) -> Vec<&str> {
            self.seen.iter().map(|(c, _)| c.as_str()).collect()
        }
    }

    impl Vm for Transcript {
        fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
            self.seen.push((cmd.to_string(), args));
            match self.steps.pop_front() {
                Some((want, answer)) => {
                    assert_eq!(want, cmd, "the migration sent {cmd} where the transcript has {want}");
                    answer
                }
                None => Err("QMP connection closed".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_is_in_bytes_per_second() {
        assert_eq!(bytes_per_s(8.0), 1_000_000);
    }

    #[test]
    fn progress_reads_query_migrate() {
        let q = serde_json::json!({"status": "active", "ram": {"total": 1000, "remaining": 250, "transferred": 900, "mbps": 80.5, "dirty-sync-count": 2}});
        let p = Progress::from_query(&q);
        assert_eq!((p.status.as_str(), p.percent, p.remaining_bytes, p.passes), ("active", 75.0, 250, 2));
        assert_eq!(Progress::from_query(&serde_json::json!({"status": "setup"})).percent, 0.0);
    }
}
