//! PID 1's side of storage while the blade runs: `reload-aliases --all` (this blade's reload,
//! then every other blade's, asked at once over their APIs with the cluster's token), and the
//! aliases the running guests use, which a reload must not take away.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::peer::HttpPeer;
use crate::proto::request::{BladeReload, Operator, ReloadedAll, Request};
use crate::storage::reload::ReloadReport;

/// How long another blade's reload may take (its scans and its wait for new maps).
const PEER_RELOAD: Duration = Duration::from_secs(90);

/// Runs this blade's reload (`here`) and every peer's at once, and gathers their outcomes.
pub fn reload_everywhere(
    me: String,
    here: impl FnOnce() -> Result<ReloadReport, String> + Send,
    peers: Vec<(String, Result<HttpPeer, String>)>,
) -> ReloadedAll {
    let (here, handles): (Result<ReloadReport, String>, Vec<(String, std::thread::Result<_>)>) =
        std::thread::scope(|s| {
            let local = s.spawn(here);
            let running: Vec<_> = peers
                .into_iter()
                .map(|(node, peer)| {
                    let h = s.spawn(move || {
                        let mut p = peer?;
                        p.timeout = PEER_RELOAD;
                        p.send::<ReloadReport>(&Request::Operator(Operator::StorageReload { all: false }))
                            .map_err(|e| format!("{}: {e}", p.addr))
                    });
                    (node, h)
                })
                .collect();
            let here =
                local.join().unwrap_or_else(|p| Err(format!("the reload panicked: {}", crate::panic_message(&p))));
            (here, running.into_iter().map(|(n, h)| (n, h.join())).collect())
        });
    let mut blades = vec![outcome(me, here)];
    for (node, r) in handles {
        let r: Result<ReloadReport, String> =
            r.unwrap_or_else(|p| Err(format!("the call panicked: {}", crate::panic_message(&p))));
        blades.push(outcome(node, r));
    }
    let failed = blades.iter().filter(|b| b.error.is_some()).count();
    let ok = format!("alias table reloaded on {} of {} blades", blades.len() - failed, blades.len());
    ReloadedAll { ok, blades }
}

fn outcome(node: String, r: Result<ReloadReport, String>) -> BladeReload {
    match r {
        Ok(report) => BladeReload { node, report: Some(report), error: None },
        Err(e) => BladeReload { node, report: None, error: Some(e) },
    }
}

/// The aliases used by guests whose process runs (or is arriving) here: alias -> guest.
pub fn in_use(guests: impl Iterator<Item = (String, Vec<String>)>) -> BTreeMap<String, String> {
    guests.flat_map(|(g, disks)| disks.into_iter().map(move |d| (d, g.clone()))).collect()
}
