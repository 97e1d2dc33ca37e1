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
pub mod owner;
pub mod peer;
pub mod source;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::error::{find_key_line, ConfigError};

/// `[migration]` in the cluster configuration: the same on every blade.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// TCP ports a destination listens on for incoming streams: `first-last`.
    #[serde(default = "ports")]
    pub ports: String,
    /// The pause QEMU may take at switchover, to start with.
    #[serde(default = "downtime")]
    pub downtime_limit_ms: u64,
    /// What the downtime limit may be raised to when a migration does not converge.
    #[serde(default = "max_downtime")]
    pub max_downtime_ms: u64,
    /// Bandwidth cap for one migration stream, in Mbit/s.
    #[serde(default = "bandwidth", deserialize_with = "crate::config::values::bandwidth")]
    pub max_bandwidth_mbps: f64,
    /// Not converged after this long: the downtime limit is doubled (and again after as long).
    #[serde(default = "converge_after", deserialize_with = "crate::config::values::seconds")]
    pub converge_after_s: f64,
    /// Not completed after this long: cancelled, the guest stays on the source.
    #[serde(default = "timeout", deserialize_with = "crate::config::values::seconds")]
    pub timeout_s: f64,
    /// Migrations an evacuation runs at once.
    #[serde(default = "one")]
    pub parallel: usize,
    /// QEMU migration capabilities set on both sides (`events` is always set).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn ports() -> String {
    "49152-49215".into()
}
fn downtime() -> u64 {
    300
}
fn max_downtime() -> u64 {
    5000
}
fn bandwidth() -> f64 {
    8000.0
}
fn converge_after() -> f64 {
    60.0
}
fn timeout() -> f64 {
    600.0
}
fn one() -> usize {
    1
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ports: ports(),
            downtime_limit_ms: downtime(),
            max_downtime_ms: max_downtime(),
            max_bandwidth_mbps: bandwidth(),
            converge_after_s: converge_after(),
            timeout_s: timeout(),
            parallel: one(),
            capabilities: vec![],
        }
    }
}

impl Settings {
    /// The listening port range, when `ports` is well formed.
    pub fn port_range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let (a, b) = self.ports.split_once('-')?;
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0 && a <= b).then_some(a..=b)
    }

    /// The capabilities both sides set: `events` first, then the configured ones.
    pub fn all_capabilities(&self) -> Vec<String> {
        let mut caps = vec!["events".to_string()];
        caps.extend(self.capabilities.iter().filter(|c| *c != "events").cloned());
        caps
    }

    pub fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |key: &str, msg: String| match find_key_line(text, "migration", key) {
            Some(l) => ConfigError::at_line(file, l, msg),
            None => ConfigError::new(file, msg),
        };
        if self.port_range().is_none() {
            return Err(at("ports", format!("migration ports {:?} must be first-last, e.g. 49152-49215", self.ports)));
        }
        if self.downtime_limit_ms == 0
            || self.max_downtime_ms < self.downtime_limit_ms
            || self.max_downtime_ms > 600_000
        {
            return Err(at(
                "max-downtime-ms",
                "migration: need 0 < downtime-limit-ms <= max-downtime-ms <= 600000 (ten minutes)".into(),
            ));
        }
        for (key, v) in [("timeout-s", self.timeout_s), ("converge-after-s", self.converge_after_s)] {
            if v <= 0.0 {
                return Err(at(key, format!("migration: {key} must be > 0")));
            }
        }
        if !(1..=MAX_PARALLEL).contains(&self.parallel) {
            return Err(at("parallel", format!("migration: parallel must be 1-{MAX_PARALLEL}")));
        }
        if self.capabilities.len() > 32 {
            return Err(at("capabilities", "migration: at most 32 capabilities".into()));
        }
        if let Some(c) = self.capabilities.iter().find(|c| !is_capability_name(c)) {
            return Err(at("capabilities", format!("migration: {c:?} is not a QEMU capability name")));
        }
        Ok(())
    }
}

/// Migrations an evacuation may run at once.
pub const MAX_PARALLEL: usize = 64;
/// What a bandwidth cap may be (Mbit/s): finite, above zero, at most 1 Tbit/s.
pub const BANDWIDTH_RANGE: &str = "a bandwidth cap must be a number of Mbit/s above 0 and at most 1000000";

pub fn valid_bandwidth(mbps: f64) -> bool {
    mbps.is_finite() && mbps > 0.0 && mbps <= 1_000_000.0
}

/// Whether `c` has the shape of a QEMU migration capability name (what a peer may ask for).
pub fn is_capability_name(c: &str) -> bool {
    !c.is_empty() && c.chars().all(|x| x.is_ascii_lowercase() || x == '-')
}

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

impl Vm for crate::guests::qmp::Qmp {
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        crate::guests::qmp::Qmp::execute(self, cmd, args)
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

/// Picks where a guest goes: the first of its blades, in configuration order, that answered,
/// is not drained and has the memory. `answers` holds each candidate's status or why not.
pub fn choose_target(
    guest: &crate::guests::GuestSpec,
    me: &str,
    answers: &[(String, Result<crate::api::Status, String>)],
) -> Result<String, String> {
    let mut why = vec![];
    for node in guest.blades().filter(|n| *n != me) {
        match answers.iter().find(|(n, _)| n == node).map(|(_, a)| a) {
            None => why.push(format!("{node}: not asked")),
            Some(Err(e)) => why.push(format!("{node}: {e}")),
            Some(Ok(s)) if s.drained.is_some() => why.push(format!("{node}: drained")),
            Some(Ok(s)) if s.memory.available_mib < guest.memory_mib + 64 => why.push(format!(
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
    fn settings_default_and_validate_with_lines() {
        let s = Settings::default();
        assert_eq!(s.port_range(), Some(49152..=49215));
        assert_eq!(s.all_capabilities(), vec!["events"]);
        assert_eq!(bytes_per_s(8.0), 1_000_000);
        let text = "[migration]\nports = \"9-2\"\n";
        let bad: Settings = toml::from_str::<toml::Table>(text).unwrap()["migration"].clone().try_into().unwrap();
        let e = bad.validate(Path::new("c.toml"), text).unwrap_err().to_string();
        assert_eq!(e, "c.toml:2: migration ports \"9-2\" must be first-last, e.g. 49152-49215");
        let text = "[migration]\ncapabilities = [\"x-colo; rm\"]\n";
        let bad: Settings = toml::from_str::<toml::Table>(text).unwrap()["migration"].clone().try_into().unwrap();
        assert!(bad.validate(Path::new("c.toml"), text).unwrap_err().to_string().contains("not a QEMU capability"));
    }

    #[test]
    fn progress_reads_query_migrate() {
        let q = serde_json::json!({"status": "active", "ram": {"total": 1000, "remaining": 250, "transferred": 900, "mbps": 80.5, "dirty-sync-count": 2}});
        let p = Progress::from_query(&q);
        assert_eq!((p.status.as_str(), p.percent, p.remaining_bytes, p.passes), ("active", 75.0, 250, 2));
        assert_eq!(Progress::from_query(&serde_json::json!({"status": "setup"})).percent, 0.0);
    }
}
