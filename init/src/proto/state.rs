//! A guest's state as every reader and writer names it.

use serde::{Deserialize, Serialize};

/// Where a guest stands on one blade: what `/v1/status` says of it (kebab-case on the wire, as
/// since the first release), and what metrics, the CLI and owner checks read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestState {
    /// Placed here; the maps of its disks are not all there yet.
    WaitingForDisks,
    /// Placed here and not started (not autostarted, or waiting for an owner check).
    Defined,
    Starting,
    Running,
    /// Its QEMU died; it is restarted after a backoff.
    Crashed,
    Stopping,
    Stopped,
    /// Restarted too often without a healthy run: left alone until an operator starts it.
    Failed,
    /// It runs on another blade.
    Elsewhere,
    /// Arriving here by live migration (a paused QEMU receiving the stream).
    Incoming,
    /// Leaving this blade by live migration.
    Migrating,
    /// Paused here after a migration its destination did not confirm.
    InDoubt,
    /// A state this release does not know (a peer on a newer one).
    #[serde(other)]
    Unknown,
}

impl GuestState {
    pub const ALL: [GuestState; 13] = [
        GuestState::WaitingForDisks,
        GuestState::Defined,
        GuestState::Starting,
        GuestState::Running,
        GuestState::Crashed,
        GuestState::Stopping,
        GuestState::Stopped,
        GuestState::Failed,
        GuestState::Elsewhere,
        GuestState::Incoming,
        GuestState::Migrating,
        GuestState::InDoubt,
        GuestState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::WaitingForDisks => "waiting-for-disks",
            GuestState::Defined => "defined",
            GuestState::Starting => "starting",
            GuestState::Running => "running",
            GuestState::Crashed => "crashed",
            GuestState::Stopping => "stopping",
            GuestState::Stopped => "stopped",
            GuestState::Failed => "failed",
            GuestState::Elsewhere => "elsewhere",
            GuestState::Incoming => "incoming",
            GuestState::Migrating => "migrating",
            GuestState::InDoubt => "in-doubt",
            GuestState::Unknown => "unknown",
        }
    }

    /// Whether a QEMU for the guest exists on that blade, or will again by itself: what an owner
    /// check counts as "runs there". A state this release does not know counts too: a peer on a
    /// newer release is never taken as free.
    pub fn occupies(self) -> bool {
        matches!(
            self,
            GuestState::Starting
                | GuestState::Running
                | GuestState::Crashed
                | GuestState::Stopping
                | GuestState::Incoming
                | GuestState::Migrating
                | GuestState::InDoubt
                | GuestState::Unknown
        )
    }
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One guest in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStatus {
    pub name: String,
    pub state: GuestState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Seconds in the current state (its uptime while running).
    pub uptime_s: f64,
    pub disks: Vec<String>,
    pub reason: Option<String>,
    /// For a guest `elsewhere`: the blade this one believes runs it (what an owner check reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    /// Who holds its storage lease (`held here`, `held by blade2`, `free`, ...), when the
    /// cluster has a lease area and it has been read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// What its process has used (its cgroup's figures), while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::supervisor::cgroup::Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_like_an_operator_expects() {
        // On the wire they are the first release's words, each one its own.
        for st in GuestState::ALL {
            let wire = serde_json::to_value(st).unwrap();
            assert_eq!(wire, st.as_str(), "{st:?}");
            assert_eq!(serde_json::from_value::<GuestState>(wire).unwrap(), st);
        }
        assert_eq!(format!("{:<10}|", GuestState::Running), "running   |", "the CLI's columns line up");
        // What a newer release may say is read as unknown, and unknown occupies.
        let newer: GuestState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(newer, GuestState::Unknown);
        assert!(newer.occupies() && GuestState::InDoubt.occupies() && !GuestState::Stopped.occupies());
    }
}
