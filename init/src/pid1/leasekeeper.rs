//! Keeps this blade in the cluster's lease area: waits for sanlock, checks the area holds the
//! cluster's lockspace, joins it with the blade's host id, then watches that it stays joined,
//! reporting each change to the coordinator (which starts no guest until it is joined). An area
//! that is not initialised is checked again every few seconds, so `bladevisor leases init` on
//! any blade lets every blade join without a reboot. Also the operator's `leases init`.
//!
//! If PID 1 dies the keeper dies with it; sanlock goes on renewing (its own process) and the
//! guests keep their leases; a rebooted blade joins again.

use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::Duration;

use tracing::{info, warn};

use super::Event;
use crate::coord::Report;
use crate::leases::{self, Area, Lockspace};

/// How often an area not joined is looked at again, and a joined one checked.
const POLL: Duration = Duration::from_secs(5);

fn report(tx: &Sender<Event>, last: &mut Option<Lockspace>, state: Lockspace) {
    if last.as_ref() != Some(&state) {
        match &state {
            Lockspace::Joined => info!("lease area joined: guests may take their leases"),
            Lockspace::Joining => info!("joining the lease area"),
            Lockspace::NotInitialised(w) => warn!("the lease area is not initialised ({w}): bladevisor leases init"),
            Lockspace::Failed(w) => warn!("the lease area cannot be joined: {w}"),
        }
        let _ = tx.send(Event::Report(Report::Leases(state.clone())));
        *last = Some(state);
    }
}

/// Whether the area holds this cluster's lockspace (Ok), or where that leaves this blade.
pub fn initialised(area: &Area) -> Result<(), Lockspace> {
    match leases::run(&area.read_argv(), Duration::from_secs(30)) {
        Ok(out) => leases::read_leader_says(&area.lockspace, true, &out),
        Err(e) => leases::read_leader_says(&area.lockspace, false, &e),
    }
}

pub fn keep(area: Area, tx: Sender<Event>) {
    crate::spawn_worker("lockspace", move || {
        let mut last = None;
        let join_limit = Duration::from_secs(8 * area.ha.io_timeout_s as u64 + 60);
        loop {
            if !Path::new(leases::SOCKET).exists() {
                report(&tx, &mut last, Lockspace::Failed("sanlock is not running (see its service)".into()));
            } else if leases::run(&area.inquire_argv(), Duration::from_secs(30)).is_ok() {
                report(&tx, &mut last, Lockspace::Joined);
            } else if last == Some(Lockspace::Joined) {
                // Said first: reading the LUN below may hang while its paths are gone.
                let why = "this blade left the lease area (sanlock could not renew it: its guests' QEMUs were stopped)";
                report(&tx, &mut last, Lockspace::Failed(why.into()));
            } else if !area.path.exists() {
                report(&tx, &mut last, Lockspace::Failed(format!("{} is not there", area.path.display())));
            } else {
                match initialised(&area) {
                    Ok(()) => {
                        report(&tx, &mut last, Lockspace::Joining);
                        match leases::run(&area.join_argv(), join_limit) {
                            Ok(_) => report(&tx, &mut last, Lockspace::Joined),
                            Err(e) => report(&tx, &mut last, Lockspace::Failed(e)),
                        }
                    }
                    Err(state) => report(&tx, &mut last, state),
                }
            }
            std::thread::sleep(POLL);
        }
    });
}

/// At an orderly shutdown: once the guests' QEMUs are gone (no lease held here), leaves the
/// lockspace and stops sanlock, so that neither the watchdog nor sanlock resets a blade that is
/// powering off. Gives up after `limit` (the guests' stop budget): then the watchdog decides.
pub fn leave(area: Area, limit: Duration) {
    crate::spawn_worker("leave-lockspace", move || {
        let end = std::time::Instant::now() + limit;
        let status = [leases::SANLOCK.to_string(), "client".into(), "status".into()];
        loop {
            match leases::run(&status, Duration::from_secs(10)) {
                Ok(out) if !out.lines().any(|l| l.starts_with("r ")) => break,
                Err(_) => return, // sanlock is gone already
                _ if std::time::Instant::now() >= end => {
                    warn!("guests still hold leases: the lockspace is not left");
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        match leases::run(&area.leave_argv(), Duration::from_secs(8 * area.ha.io_timeout_s as u64 + 30)) {
            Ok(_) => info!("left the lease area"),
            Err(e) => warn!("could not leave the lease area: {e}"),
        }
        let stop = [leases::SANLOCK.to_string(), "client".into(), "shutdown".into()];
        let _ = leases::run(&stop, Duration::from_secs(10));
    });
}

/// `bladevisor leases init`: writes the lockspace and one lease per guest, refusing an area that
/// already holds this cluster's lockspace unless `force` (which breaks every lease held on it).
pub fn init(area: &Area, guests: &[String], force: bool) -> Result<String, (bool, String)> {
    if initialised(area).is_ok() && !force {
        return Err((
            true,
            format!(
                "{} already holds lockspace {}; leases init --force rewrites it, breaking every lease held on it",
                area.path.display(),
                area.lockspace
            ),
        ));
    }
    warn!(path = %area.path.display(), force, "initialising the lease area");
    for argv in area.init_argv(guests.iter().map(String::as_str)) {
        leases::run(&argv, Duration::from_secs(60)).map_err(|e| (false, e))?;
    }
    Ok(format!(
        "lease area initialised on {}: lockspace {}, {} guest leases",
        area.path.display(),
        area.lockspace,
        guests.len()
    ))
}
