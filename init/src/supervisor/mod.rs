//! The service supervisor: starts services in dependency order once what they depend on is
//! ready, restarts what dies according to its policy, and stops everything in reverse order.
//!
//! The state machine here is pure: it asks a [`Runtime`] to spawn and signal processes and is
//! told about exits by whoever reaps them (PID 1's main loop). Unit tests drive it with a fake
//! runtime and a fake clock; `process.rs` is the real runtime.

pub mod cgroup;
use crate::config::order;
pub mod policy;
pub mod process;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::services::Readiness;
use crate::config::ServiceSpec;
use policy::{decide, Decision, Exit};

/// What the supervisor needs from the outside world.
pub trait Runtime {
    /// Starts the service's process and returns its pid.
    fn spawn(&mut self, spec: &ServiceSpec) -> std::io::Result<u32>;
    /// Sends a signal to the service: its main process and everything it forked.
    fn signal(&mut self, name: &str, pid: u32, sig: Signal);
    /// SIGKILL at once, with no graceful step first (an operator's kill).
    fn force_kill(&mut self, name: &str, pid: u32) {
        self.signal(name, pid, Signal::SIGKILL);
    }
    /// Whether the readiness check passes now.
    fn is_ready(&mut self, check: &Readiness) -> bool;
    /// The service's processes are gone: release what was held for it (its cgroup).
    fn release(&mut self, name: &str);
}

/// The lifecycle of one service, as the operator sees it in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Not started yet: waiting for its dependencies to be ready.
    Waiting,
    /// Started; its readiness check has not passed yet.
    Starting,
    /// Started and ready.
    Running,
    /// Exited; will be restarted when its backoff delay ends.
    Backoff,
    /// Asked to stop; waiting for it to exit.
    Stopping,
    /// Exited and its policy says that was final.
    Exited,
    /// Restarted too often without a healthy run; left alone until an operator starts it.
    Failed,
    /// Stopped by an operator or by shutdown, or disabled.
    Stopped,
}

/// One service's status, as the API and CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// Restarts since boot.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<Exit>,
    /// Seconds in the current state.
    pub since_s: f64,
    /// Why the service is not running, when that is not obvious from the state.
    pub reason: Option<String>,
    /// Memory its cgroup uses now (`memory.current`: its processes and the file pages they
    /// brought in), where cgroups are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Of that, the file pages (page cache the kernel may drop and read again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file_bytes: Option<u64>,
    /// CPU time its cgroup has used since it started (`cpu.stat`: its processes and all they
    /// ran), where cgroups are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

#[derive(Debug)]
struct Unit {
    spec: ServiceSpec,
    state: ServiceState,
    pid: Option<u32>,
    /// When the current state began.
    since: Instant,
    /// When the current process started.
    started: Option<Instant>,
    /// End of the backoff delay, or of the stop timeout.
    deadline: Option<Instant>,
    /// SIGKILL already sent for the current stop.
    killed: bool,
    restarts: u32,
    streak: u32,
    last_exit: Option<Exit>,
    reason: Option<String>,
    /// Stop was asked as part of a restart: start again once it has exited.
    restart_after_stop: bool,
    /// Forget the service once its process has exited (see `discard`).
    remove_on_exit: bool,
}

impl Unit {
    fn new(spec: ServiceSpec, now: Instant) -> Self {
        let state = if spec.enabled { ServiceState::Waiting } else { ServiceState::Stopped };
        Unit {
            spec,
            state,
            pid: None,
            since: now,
            started: None,
            deadline: None,
            killed: false,
            restarts: 0,
            streak: 0,
            last_exit: None,
            reason: None,
            restart_after_stop: false,
            remove_on_exit: false,
        }
    }

    fn set(&mut self, state: ServiceState, now: Instant) {
        self.state = state;
        self.since = now;
    }
}

/// Why an operator request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    UnknownService(String),
    ShuttingDown,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::UnknownService(n) => write!(f, "no service named {n:?}"),
            RequestError::ShuttingDown => write!(f, "the blade is shutting down"),
        }
    }
}

pub struct Supervisor {
    units: BTreeMap<String, Unit>,
    order: Vec<String>,
    shutting_down: bool,
}

/// How often readiness checks are polled while a service is starting.
const READY_POLL: Duration = Duration::from_millis(100);

impl Supervisor {
    /// Builds the supervisor from a validated service table (see `config::services`).
    pub fn new(specs: Vec<ServiceSpec>, now: Instant) -> Self {
        // The parser refuses cycles; if one got here anyway, fall back to name order rather
        // than refusing to run anything.
        let order = order::start_order(&specs).unwrap_or_else(|_| specs.iter().map(|s| s.name.clone()).collect());
        let units = specs.into_iter().map(|spec| (spec.name.clone(), Unit::new(spec, now))).collect();
        Supervisor { units, order, shutting_down: false }
    }

    /// Adds a service decided at boot (the management network's, which depends on the NIC
    /// found). It starts on the next tick like any other. A name already taken is refused.
    pub fn add(&mut self, spec: ServiceSpec, now: Instant) -> Result<(), String> {
        if self.units.contains_key(&spec.name) {
            return Err(format!("a service named {} already exists", spec.name));
        }
        let name = spec.name.clone();
        let mut specs: Vec<ServiceSpec> = self.units.values().map(|u| u.spec.clone()).collect();
        specs.push(spec.clone());
        self.order = order::start_order(&specs).map_err(|c| format!("dependency cycle: {}", c.join(" -> ")))?;
        self.units.insert(name, Unit::new(spec, now));
        Ok(())
    }

    /// True when no service has a process left.
    pub fn all_stopped(&self) -> bool {
        self.units.values().all(|u| u.pid.is_none())
    }

    pub fn status(&self, now: Instant) -> Vec<ServiceStatus> {
        self.order.iter().filter_map(|n| self.service_status(n, now)).collect()
    }

    /// One service's status, if there is such a service.
    pub fn service_status(&self, name: &str, now: Instant) -> Option<ServiceStatus> {
        self.units.get(name).map(|u| ServiceStatus {
            name: u.spec.name.clone(),
            state: u.state,
            pid: u.pid,
            restarts: u.restarts,
            last_exit: u.last_exit,
            since_s: now.saturating_duration_since(u.since).as_secs_f64(),
            reason: u.reason.clone(),
            memory_bytes: None,
            memory_file_bytes: None,
            cpu_seconds: None,
        })
    }

    /// The longest an orderly stop of every service can take: the sum of their stop timeouts
    /// (each waits for its dependents).
    pub fn stop_budget(&self) -> Duration {
        self.units.values().map(|u| u.spec.stop_timeout()).sum()
    }

    pub fn state(&self, name: &str) -> Option<ServiceState> {
        self.units.get(name).map(|u| u.state)
    }

    /// A dependency is ready when it runs, or when it was a one-shot that finished its job
    /// (exited 0, and its policy says that was final: a bridge set up, a module loaded).
    fn deps_ready(&self, u: &Unit) -> bool {
        u.spec.after.iter().all(|d| {
            self.units.get(d).is_none_or(|d| {
                d.state == ServiceState::Running
                    || d.state == ServiceState::Exited && d.last_exit == Some(Exit::Code(0))
            })
        })
    }

    /// Names of running services that depend on `name` (they must stop first).
    fn live_dependents(&self, name: &str) -> Vec<String> {
        self.units
            .values()
            .filter(|u| u.pid.is_some() && u.spec.after.iter().any(|a| a == name))
            .map(|u| u.spec.name.clone())
            .collect()
    }

    fn start(&mut self, name: &str, rt: &mut dyn Runtime, now: Instant) {
        let Some(u) = self.units.get_mut(name) else { return };
        match rt.spawn(&u.spec) {
            Ok(pid) => {
                info!(service = %name, pid, "started");
                u.pid = Some(pid);
                u.started = Some(now);
                u.killed = false;
                u.reason = None;
                let ready_now = u.spec.ready.path.is_none() && u.spec.ready.tcp.is_none();
                u.set(if ready_now { ServiceState::Running } else { ServiceState::Starting }, now);
            }
            Err(e) => {
                error!(service = %name, argv = ?u.spec.argv, "cannot start: {e}");
                u.reason = Some(format!("cannot start {}: {e}", u.spec.argv[0]));
                // A program that cannot be executed is a failed start: same backoff, same
                // give-up threshold as a crash, so a missing binary does not spin.
                self.after_exit(name, Exit::Code(127), Duration::ZERO, now);
            }
        }
    }

    /// Applies the restart policy to a process that ended on its own.
    fn after_exit(&mut self, name: &str, exit: Exit, ran_for: Duration, now: Instant) {
        let Some(u) = self.units.get_mut(name) else { return };
        u.last_exit = Some(exit);
        match decide(u.spec.restart, &u.spec.backoff, exit, ran_for, u.streak) {
            Decision::Restart { delay, streak } => {
                u.streak = streak;
                u.deadline = Some(now + delay);
                u.set(ServiceState::Backoff, now);
                warn!(service = %name, %exit, restart_in_ms = delay.as_millis() as u64, attempt = streak, "exited; restarting after backoff");
            }
            Decision::Done => {
                u.set(ServiceState::Exited, now);
                info!(service = %name, %exit, "exited; policy {:?} does not restart it", u.spec.restart);
            }
            Decision::GiveUp { streak } => {
                u.set(ServiceState::Failed, now);
                let why = format!("gave up after {streak} restarts without a healthy run (last: {exit})");
                error!(service = %name, %exit, "failed: {why}");
                u.reason = Some(why);
            }
        }
    }

    /// A reaped process. Returns false when the pid belongs to no service (an orphan).
    pub fn on_exit(&mut self, pid: u32, exit: Exit, rt: &mut dyn Runtime, now: Instant) -> bool {
        let Some(name) = self.units.values().find(|u| u.pid == Some(pid)).map(|u| u.spec.name.clone()) else {
            return false;
        };
        rt.release(&name);
        let u = self.units.get_mut(&name).expect("found above");
        u.pid = None;
        if u.remove_on_exit {
            info!(service = %name, pid, %exit, "ended and removed");
            self.units.remove(&name);
            self.order.retain(|n| *n != name);
            return true;
        }
        let ran_for = u.started.map(|s| now.saturating_duration_since(s)).unwrap_or_default();
        match u.state {
            ServiceState::Stopping => {
                info!(service = %name, pid, %exit, "stopped");
                u.last_exit = Some(exit);
                if u.restart_after_stop && !self.shutting_down {
                    u.restart_after_stop = false;
                    u.streak = 0;
                    u.set(ServiceState::Waiting, now);
                } else {
                    u.set(ServiceState::Stopped, now);
                }
            }
            _ if self.shutting_down => {
                u.last_exit = Some(exit);
                u.set(ServiceState::Stopped, now);
            }
            _ => {
                if u.killed {
                    // Killed by us for missing its readiness deadline: a failed start.
                    u.reason = Some("not ready within its readiness timeout".into());
                }
                self.after_exit(&name, exit, ran_for, now);
            }
        }
        true
    }

    fn stop_unit(&mut self, name: &str, rt: &mut dyn Runtime, now: Instant) {
        let Some(u) = self.units.get_mut(name) else { return };
        match u.pid {
            Some(pid) => {
                let how = if u.spec.qmp.is_some() { "ACPI power-off" } else { "SIGTERM" };
                info!(service = %name, pid, timeout_s = u.spec.stop_timeout_s, "stopping ({how})");
                rt.signal(name, pid, Signal::SIGTERM);
                u.deadline = Some(now + u.spec.stop_timeout());
                u.killed = false;
                u.set(ServiceState::Stopping, now);
            }
            None => {
                if u.state != ServiceState::Stopped {
                    u.set(ServiceState::Stopped, now);
                }
            }
        }
    }

    /// Advances every service: starts what may start, checks readiness, enforces timeouts.
    /// Returns when it next needs to be called, if nothing else happens first.
    pub fn tick(&mut self, rt: &mut dyn Runtime, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut wake = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if self.shutting_down {
            self.tick_shutdown(rt, now);
        }
        for name in self.order.clone() {
            let Some(u) = self.units.get(&name) else { continue };
            match u.state {
                ServiceState::Waiting if !self.shutting_down && self.deps_ready(u) => {
                    self.start(&name, rt, now);
                    if let Some(u) = self.units.get(&name) {
                        if u.state == ServiceState::Backoff {
                            wake(u.deadline.unwrap_or(now));
                        } else {
                            wake(now + READY_POLL);
                        }
                    }
                }
                ServiceState::Backoff if !self.shutting_down => {
                    let due = u.deadline.unwrap_or(now);
                    if due <= now {
                        let u = self.units.get_mut(&name).expect("present");
                        u.restarts += 1;
                        u.set(ServiceState::Waiting, now);
                        if self.deps_ready(self.units.get(&name).expect("present")) {
                            self.start(&name, rt, now);
                        }
                        wake(now + READY_POLL);
                    } else {
                        wake(due);
                    }
                }
                ServiceState::Starting => {
                    let (check, timeout, since, pid, killed) =
                        (u.spec.ready.clone(), u.spec.ready_timeout(), u.since, u.pid, u.killed);
                    if rt.is_ready(&check) {
                        let u = self.units.get_mut(&name).expect("present");
                        info!(service = %name, ready_after_ms = now.saturating_duration_since(since).as_millis() as u64, "ready");
                        u.set(ServiceState::Running, now);
                        // A dependent may start now.
                        wake(now);
                    } else if now.saturating_duration_since(since) >= timeout && !killed {
                        warn!(service = %name, timeout_s = timeout.as_secs_f64(), "not ready in time; killing it");
                        if let Some(pid) = pid {
                            rt.signal(&name, pid, Signal::SIGKILL);
                        }
                        self.units.get_mut(&name).expect("present").killed = true;
                    } else {
                        wake(now + READY_POLL);
                    }
                }
                ServiceState::Stopping => {
                    let due = u.deadline.unwrap_or(now);
                    if due <= now && !u.killed {
                        if let Some(pid) = u.pid {
                            let how = if u.spec.qmp.is_some() { "QMP quit, then SIGKILL" } else { "SIGKILL" };
                            warn!(service = %name, pid, "did not stop within its timeout; {how}");
                            rt.signal(&name, pid, Signal::SIGKILL);
                        }
                        self.units.get_mut(&name).expect("present").killed = true;
                    } else if due > now {
                        wake(due);
                    }
                }
                _ => {}
            }
        }
        next
    }

    /// Stops, in reverse dependency order, every service whose dependents have all exited.
    fn tick_shutdown(&mut self, rt: &mut dyn Runtime, now: Instant) {
        for name in self.order.clone().iter().rev() {
            let Some(u) = self.units.get(name) else { continue };
            let stoppable = !matches!(u.state, ServiceState::Stopping | ServiceState::Stopped)
                || (u.state == ServiceState::Stopped && u.pid.is_some());
            if stoppable && self.live_dependents(name).is_empty() {
                self.stop_unit(name, rt, now);
            }
        }
    }

    /// Begins an orderly stop of every service: dependents first, each given its stop timeout.
    pub fn begin_shutdown(&mut self, rt: &mut dyn Runtime, now: Instant) {
        if !self.shutting_down {
            info!("stopping all services in reverse dependency order");
        }
        self.shutting_down = true;
        for u in self.units.values_mut() {
            if u.pid.is_none() && u.state != ServiceState::Stopped {
                u.set(ServiceState::Stopped, now);
            }
        }
        self.tick_shutdown(rt, now);
    }

    /// Operator: start a stopped, exited or failed service (its failure streak starts over).
    pub fn request_start(&mut self, name: &str, now: Instant) -> Result<(), RequestError> {
        self.start_on_request(name, "operator", now)
    }

    /// The boot: start a service the image declares `enabled = false` because it must wait for
    /// a step of the boot (the coldplug's second stage, once storage is up).
    pub fn start_for_boot(&mut self, name: &str, now: Instant) -> Result<(), RequestError> {
        self.start_on_request(name, "the boot", now)
    }

    fn start_on_request(&mut self, name: &str, by: &str, now: Instant) -> Result<(), RequestError> {
        if self.shutting_down {
            return Err(RequestError::ShuttingDown);
        }
        let u = self.units.get_mut(name).ok_or_else(|| RequestError::UnknownService(name.into()))?;
        if matches!(
            u.state,
            ServiceState::Stopped | ServiceState::Exited | ServiceState::Failed | ServiceState::Backoff
        ) {
            info!(service = %name, "start requested by {by}");
            u.streak = 0;
            u.reason = None;
            u.set(ServiceState::Waiting, now);
        }
        Ok(())
    }

    /// Operator: stop a service and keep it stopped.
    pub fn request_stop(&mut self, name: &str, rt: &mut dyn Runtime, now: Instant) -> Result<(), RequestError> {
        if !self.units.contains_key(name) {
            return Err(RequestError::UnknownService(name.into()));
        }
        info!(service = %name, "stop requested by operator");
        self.stop_unit(name, rt, now);
        Ok(())
    }

    /// Operator: kill a service's processes without asking it to stop, as a crash would.
    pub fn request_kill(&mut self, name: &str, rt: &mut dyn Runtime) -> Result<(), RequestError> {
        let u = self.units.get(name).ok_or_else(|| RequestError::UnknownService(name.into()))?;
        if let Some(pid) = u.pid {
            warn!(service = %name, pid, "SIGKILL requested by operator");
            rt.force_kill(name, pid);
        }
        Ok(())
    }

    /// Changes a service's restart policy from now on (a guest that arrived by migration gets
    /// its own policy once it runs).
    /// Replaces how a service is started from now on, leaving its running process alone (an
    /// arrived guest's QEMU was started paused for its stream; its next start is a normal one).
    /// The name and dependencies stay.
    pub fn replace_spec(&mut self, name: &str, spec: ServiceSpec) {
        if let Some(u) = self.units.get_mut(name) {
            let after = std::mem::take(&mut u.spec.after);
            u.spec = ServiceSpec { name: u.spec.name.clone(), after, ..spec };
        }
    }

    /// Ends a service for good without a graceful stop and forgets it once its process has
    /// exited: a migrated guest's source process, or an aborted incoming one. No policy fires.
    pub fn discard(&mut self, name: &str, rt: &mut dyn Runtime, now: Instant) {
        let Some(u) = self.units.get_mut(name) else { return };
        match u.pid {
            Some(pid) => {
                u.remove_on_exit = true;
                u.killed = true;
                u.set(ServiceState::Stopping, now);
                rt.force_kill(name, pid);
            }
            None => {
                self.units.remove(name);
                self.order.retain(|n| n != name);
            }
        }
    }

    /// Operator: stop a service if it runs, then start it again.
    pub fn request_restart(&mut self, name: &str, rt: &mut dyn Runtime, now: Instant) -> Result<(), RequestError> {
        if self.shutting_down {
            return Err(RequestError::ShuttingDown);
        }
        let running = self.units.get(name).ok_or_else(|| RequestError::UnknownService(name.into()))?.pid.is_some();
        if running {
            self.stop_unit(name, rt, now);
            self.units.get_mut(name).expect("checked").restart_after_stop = true;
            Ok(())
        } else {
            self.request_start(name, now)
        }
    }
}

#[cfg(test)]
mod tests;
