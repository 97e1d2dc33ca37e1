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

/// Asks every peer at once, each on its own thread with `timeout`: `ask`'s answer, or why the
/// peer could not be asked.
pub(super) fn ask_each<T: Send>(
    peers: Vec<(String, Result<HttpPeer, String>)>,
    timeout: Duration,
    ask: impl Fn(&HttpPeer) -> Result<T, String> + Sync,
) -> Vec<(String, Result<T, String>)> {
    let ask = &ask;
    std::thread::scope(|s| {
        let asks: Vec<_> = peers
            .into_iter()
            .map(|(node, p)| {
                s.spawn(move || {
                    let answer = p.and_then(|mut p| {
                        p.timeout = timeout;
                        ask(&p)
                    });
                    (node, answer)
                })
            })
            .collect();
        asks.into_iter().filter_map(|a| a.join().ok()).collect()
    })
}

/// What every other blade says about `guest` (for an owner check).
pub(super) fn ask_about(guest: &str, peers: Vec<(String, Result<HttpPeer, String>)>) -> Vec<(String, OwnerAnswer)> {
    let answers = ask_each(peers, Duration::from_secs(5), |p| Ok(p.about(guest)));
    answers.into_iter().map(|(n, a)| (n, a.unwrap_or_else(OwnerAnswer::Unreachable))).collect()
}

/// `bladevisor list`: this blade's guests and every other blade's, merged.
pub(super) fn cluster_guests(
    me: String,
    here: Vec<crate::proto::GuestStatus>,
    peers: Vec<(String, Result<HttpPeer, String>)>,
    guests: &std::collections::BTreeMap<String, crate::config::guest::GuestSpec>,
) -> crate::proto::cluster::ClusterGuests {
    use crate::proto::request::{Read, Request};
    let others = ask_each(peers, Duration::from_secs(10), |p| {
        p.send::<crate::proto::Status>(&Request::Read(Read::Status))
            .map(|s| s.guests)
            .map_err(|e| format!("{}: {e}", p.addr))
    });
    let mut answers = vec![(me, Ok(here))];
    answers.extend(others);
    crate::proto::cluster::merge(guests, answers)
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
