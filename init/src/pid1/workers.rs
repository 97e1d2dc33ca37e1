//! What the edge's workers do away from the main loop: a guest's lease moved with sanlock's
//! client, QMP reached as its QEMU comes up, the other blades asked all at once, an in-doubt
//! guest settled.

use std::time::{Duration, Instant};

use crate::api::peer::HttpPeer;
use crate::coord::owner::{self, Answer as OwnerAnswer};
use crate::migration::{self as mig, Outcome, Phase};
use crate::qemu::qmp::Qmp;

/// A guest's lease as its QEMU process holds it, moved with sanlock's client commands (the
/// process registered itself through `lease-exec`). Without a lease area, nothing to move.
pub(super) struct ProcessLease {
    pub(super) area: Option<crate::leases::Area>,
    pub(super) guest: String,
    pub(super) pid: Option<u32>,
}

impl ProcessLease {
    fn run(&self, argv: impl Fn(&crate::leases::Area, &str, u32) -> Vec<String>) -> Result<(), String> {
        let Some(area) = &self.area else { return Ok(()) };
        let pid = self.pid.ok_or_else(|| format!("guest {} has no process", self.guest))?;
        crate::leases::run(&argv(area, &self.guest, pid), Duration::from_secs(60)).map(|_| ())
    }
}

impl mig::Lease for ProcessLease {
    fn release(&mut self) -> Result<(), String> {
        self.run(crate::leases::Area::release_argv)
    }
    fn acquire(&mut self) -> Result<(), String> {
        self.run(crate::leases::Area::acquire_argv)
    }
}

/// Connects to a guest's QMP socket, waiting for its QEMU to create it.
pub(super) fn qmp_wait(path: &std::path::Path, limit: Duration) -> Result<Qmp, String> {
    let end = Instant::now() + limit;
    loop {
        match Qmp::connect(path, Duration::from_secs(10)) {
            Ok(q) => return Ok(q),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub(super) fn qmp_path(guest: &str) -> std::path::PathBuf {
    crate::qemu::qmp_path(&crate::run_dir(), guest)
}

pub(super) fn cannot_start(why: String) -> Outcome {
    Outcome::failed(Phase::Preparing, why, true)
}

/// Asks every blade about `guest` at once (a blade that cannot be asked answers unreachable).
pub(super) fn ask_about(guest: &str, peers: Vec<(String, Result<HttpPeer, String>)>) -> Vec<(String, OwnerAnswer)> {
    std::thread::scope(|s| {
        let asks: Vec<_> = peers
            .into_iter()
            .map(|(node, p)| {
                s.spawn(move || match p {
                    Ok(mut p) => {
                        p.timeout = Duration::from_secs(5);
                        (node, p.about(guest))
                    }
                    Err(e) => (node, OwnerAnswer::Unreachable(e)),
                })
            })
            .collect();
        asks.into_iter().filter_map(|a| a.join().ok()).collect()
    })
}

/// Asks every other blade about an in-doubt guest and keeps exactly one copy: Ok(None) when the
/// guest was resumed here, Ok(Some(node)) when that blade runs it.
pub(super) fn resolve_in_doubt(
    me: &str,
    guest: &str,
    to: &str,
    peers: Vec<(String, Result<HttpPeer, String>)>,
    mut lease: ProcessLease,
) -> Result<Option<String>, String> {
    let destination = peers.iter().find(|(n, _)| n == to).and_then(|(_, p)| p.clone().ok());
    let mut resume_here = || {
        // The lease was handed over at switchover: only if nobody took it may this copy run.
        mig::Lease::acquire(&mut lease).map_err(|e| format!("cannot take the guest's lease back: {e}"))?;
        Qmp::connect(&qmp_path(guest), Duration::from_secs(10))
            .and_then(|mut q| q.execute("cont", serde_json::json!({})))
            .map(|_| None)
    };
    match owner::resolve_in_doubt(me, to, &ask_about(guest, peers)) {
        owner::Resolution::RunsThere(node) => Ok(Some(node)),
        owner::Resolution::ResumeHere => resume_here(),
        owner::Resolution::AbortThereResumeHere => {
            let mut p = destination.ok_or_else(|| format!("{to} cannot be asked to remove its paused copy"))?;
            match mig::Peer::abort(&mut p, guest) {
                Ok(()) => resume_here(),
                Err(e) => Err(format!("{to} holds a paused copy and did not remove it: {e}")),
            }
        }
        owner::Resolution::StillUnknown(why) => Err(format!("still cannot ask every blade: {why}")),
    }
}
