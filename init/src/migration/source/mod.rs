//! The source side: drives QEMU's migration of a running guest to a destination blade and
//! decides, at each failure, what keeps the guest running exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::{bytes_per_s, caps_arg, Clock, Ending, Lease, Outcome, Peer, PeerError, Phase, Progress, Settings, Vm};

/// One migration, as decided by the source's supervisor.
#[derive(Debug, Clone)]
pub struct Plan {
    pub guest: String,
    /// The destination's name and the address its stream listener is reached on.
    pub to: String,
    pub to_ip: std::net::Ipv4Addr,
    pub caps: Vec<String>,
    pub downtime_limit_ms: u64,
    pub max_downtime_ms: u64,
    pub bandwidth_bytes: u64,
    pub converge_after: Duration,
    pub timeout: Duration,
    pub poll: Duration,
    /// Set by an operator's cancel.
    pub cancel: Arc<AtomicBool>,
    /// QEMU's TLS for the stream (None only in tests of the sequence).
    pub tls: Option<super::tls::StreamTls>,
}

impl Plan {
    pub fn new(guest: &str, to: &str, to_ip: std::net::Ipv4Addr, s: &Settings, bandwidth_mbps: Option<f64>) -> Plan {
        Plan {
            guest: guest.into(),
            to: to.into(),
            to_ip,
            caps: s.all_capabilities(),
            downtime_limit_ms: s.downtime_limit_ms,
            max_downtime_ms: s.max_downtime_ms,
            bandwidth_bytes: bytes_per_s(bandwidth_mbps.unwrap_or(s.max_bandwidth_mbps)),
            converge_after: crate::config::values::secs(s.converge_after_s),
            timeout: crate::config::values::secs(s.timeout_s),
            poll: Duration::from_millis(250),
            cancel: Arc::new(AtomicBool::new(false)),
            tls: None,
        }
    }
}

/// Polls for QEMU's figures of a completed stream, once the destination runs the guest.
const FIGURE_POLLS: u32 = 8;

/// Runs the migration to its end. `report` sees each phase change and each progress sample.
/// On `Completed` the caller retires the source's (paused) process; on `Failed` the guest runs
/// here; on `InDoubt` it is paused here and nothing may resume it without an operator.
pub fn migrate(
    vm: &mut dyn Vm,
    peer: &mut dyn Peer,
    lease: &mut dyn Lease,
    plan: &Plan,
    clock: &mut dyn Clock,
    report: &mut dyn FnMut(Phase, Option<&Progress>),
) -> Outcome {
    let g = &plan.guest;
    let mut out = Outcome { error: None, ..Outcome::failed(Phase::Preparing, "", true) };
    let fail = |mut out: Outcome, clock: &dyn Clock, why: String| {
        out.total_ms = clock.elapsed().as_millis() as u64;
        out.error = Some(why);
        out
    };
    report(Phase::Preparing, None);
    let port = match peer.prepare(g, &plan.caps) {
        Ok(p) => p,
        // Nothing was started here: the guest never stopped running.
        Err(e) => return fail(out, clock, format!("destination {}: {e}", plan.to)),
    };
    let uri = format!("tcp:{}:{port}", plan.to_ip);
    let setup = vm
        .execute("migrate-set-capabilities", caps_arg(&plan.caps))
        .and_then(|_| {
            vm.execute(
                "migrate-set-parameters",
                json!({"downtime-limit": plan.downtime_limit_ms, "max-bandwidth": plan.bandwidth_bytes}),
            )
        })
        .and_then(|_| plan.tls.as_ref().map_or(Ok(()), |t| super::tls::source(vm, t)))
        .and_then(|_| vm.execute("migrate", json!({ "uri": uri })));
    if let Err(e) = setup {
        let _ = peer.abort(g);
        return fail(out, clock, e);
    }
    info!(guest = %g, to = %plan.to, %uri, "migration started");
    out.phase = Phase::Streaming;
    let mut downtime = plan.downtime_limit_ms;
    let mut escalations = 0u32;
    let completed = loop {
        // QEMU's events say when the stream changes state or starts another pass over the
        // dirtied memory; query-migrate gives the numbers.
        for (name, data) in vm.take_events() {
            match name.as_str() {
                "MIGRATION" => {
                    info!(guest = %g, status = %data["status"].as_str().unwrap_or("?"), "migration state (QMP event)")
                }
                "MIGRATION_PASS" => {
                    info!(guest = %g, pass = %data["pass"], "migration: another pass over dirtied memory")
                }
                _ => {}
            }
        }
        if plan.cancel.load(Ordering::SeqCst) {
            break Err("cancelled by the operator".to_string());
        }
        let q = match vm.execute("query-migrate", json!({})) {
            Ok(q) => q,
            Err(e) => break Err(format!("lost the source QEMU: {e}")),
        };
        let mut p = Progress::from_query(&q);
        p.downtime_limit_ms = downtime;
        match p.status.as_str() {
            // Only the source's own completion carries its times. A guest that itself arrived
            // by migration reports its arrival's "completed" (without them) until this
            // stream's connection is up: that is not this migration.
            "completed" if q.get("total-time").is_some() => break Ok(q),
            "completed" => report(Phase::Streaming, None),
            "failed" => {
                break Err(format!("QEMU: {}", q["error-desc"].as_str().unwrap_or("the stream failed")));
            }
            "cancelled" => break Err("cancelled in QEMU".into()),
            _ => report(Phase::Streaming, Some(&p)),
        }
        let elapsed = clock.elapsed();
        if elapsed >= plan.timeout {
            break Err(format!("did not complete within {:?} (downtime limit {downtime} ms)", plan.timeout));
        }
        if elapsed >= plan.converge_after * (escalations + 1) && downtime < plan.max_downtime_ms {
            escalations += 1;
            downtime = (downtime * 2).min(plan.max_downtime_ms);
            warn!(guest = %g, remaining = p.remaining_bytes, downtime_limit_ms = downtime, "not converging: raising the downtime limit");
            if let Err(e) = vm.execute("migrate-set-parameters", json!({ "downtime-limit": downtime })) {
                break Err(e);
            }
        }
        clock.sleep(plan.poll);
    };
    let q = match completed {
        Ok(q) => q,
        Err(why) => {
            out.resumed_on_source = recover(vm, g);
            if let Err(e) = peer.abort(g) {
                warn!(guest = %g, to = %plan.to, "could not remove the destination's process: {e} (its QEMU ends with the stream)");
            }
            return fail(out, clock, why);
        }
    };
    let figures = |out: &mut Outcome, q: &serde_json::Value| {
        out.qemu_total_ms = q["total-time"].as_u64().unwrap_or(0);
        out.downtime_ms = q["downtime"].as_u64().unwrap_or(0);
        out.transferred_bytes = q["ram"]["transferred"].as_u64().unwrap_or(0);
    };
    figures(&mut out, &q);
    out.phase = Phase::Resuming;
    report(Phase::Resuming, None);
    // The source is paused for good now (postmigrate): its lease goes to the destination, which
    // takes it before it runs the guest and must then say it runs.
    if let Err(e) = lease.release() {
        // Still ours: the destination cannot run it; this copy resumes.
        out.resumed_on_source = recover(vm, g);
        let _ = peer.abort(g);
        return fail(out, clock, format!("cannot hand the guest's lease over: {e}"));
    }
    match peer.resume(g) {
        Ok(()) => {
            // QEMU says "completed" a moment before it has computed its figures (they read 0
            // then). The guest runs at the destination now; this copy is still there to ask.
            for _ in 0..FIGURE_POLLS {
                if out.qemu_total_ms > 0 {
                    break;
                }
                clock.sleep(plan.poll);
                match vm.execute("query-migrate", json!({})) {
                    Ok(q) => figures(&mut out, &q),
                    Err(_) => break,
                }
            }
            out.result = Ending::Completed;
            out.resumed_on_source = false;
            out.phase = Phase::Done;
            out.total_ms = clock.elapsed().as_millis() as u64;
            report(Phase::Done, None);
            out
        }
        Err(PeerError::Refused(why)) => match lease.acquire() {
            Ok(()) => {
                // It answered that it does not run the guest, and the lease is ours again.
                out.resumed_on_source = recover(vm, g);
                fail(out, clock, format!("destination {} could not resume the guest: {why}", plan.to))
            }
            Err(e) => {
                out.result = Ending::InDoubt;
                out.resumed_on_source = false;
                let why = format!(
                    "destination {} could not resume the guest ({why}) and its lease could not be taken back ({e}); it stays paused here until `bladevisor resolve {}`",
                    plan.to, plan.guest
                );
                fail(out, clock, why)
            }
        },
        Err(PeerError::Unreachable(why)) => {
            out.result = Ending::InDoubt;
            out.resumed_on_source = false;
            fail(
                out,
                clock,
                format!(
                    "the stream completed but {} did not confirm the guest runs there ({why}); it stays paused here until `bladevisor resolve {}` finds out which copy to keep",
                    plan.to, plan.guest
                ),
            )
        }
    }
}

/// Cancels what QEMU is doing and makes sure the guest runs here again. Returns whether it runs.
fn recover(vm: &mut dyn Vm, g: &str) -> bool {
    let _ = vm.execute("migrate_cancel", json!({}));
    let state = vm.execute("query-status", json!({})).map(|v| v["status"].as_str().unwrap_or("").to_string());
    match state.as_deref() {
        Ok("running") => true,
        Ok(s) => {
            info!(guest = %g, state = s, "resuming the guest on the source");
            vm.execute("cont", json!({})).is_ok()
        }
        Err(e) => {
            warn!(guest = %g, "cannot ask the source QEMU its state: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests;
