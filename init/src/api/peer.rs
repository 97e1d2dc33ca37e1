//! Talking to another blade over its API: the narrow questions (one guest's state, capacity and
//! drain) and the migration calls, all built from the route table. A peer of an older release
//! that lacks a narrow route (404) is asked for its whole status instead, so a rolling upgrade
//! keeps its owner checks.

use std::time::Duration;

use super::client::{send, CallError};
use crate::coord::owner::Answer;
use crate::httpc::Endpoint;
use crate::migration::{Peer as MigrationPeer, PeerError};
use crate::proto::request::{Done, GuestHere, Listening, Peer, Read, Request};
use crate::proto::{Capacity, GuestState, Status};

/// Another blade's API: its name, `ip:port`, and the blades' peer token.
#[derive(Debug, Clone)]
pub struct HttpPeer {
    /// This blade's name, sent along so the peer can check who asks.
    pub local: String,
    pub node: String,
    pub addr: String,
    pub token: Option<String>,
    /// This blade's TLS: the peer's certificate must name `node`; this blade presents its own.
    pub tls: std::sync::Arc<crate::tls::ClusterTls>,
    pub timeout: Duration,
}

impl HttpPeer {
    /// The peer `node` of the cluster, or why it cannot be reached; `token` is the blades' peer
    /// token.
    pub fn of(
        cfg: &crate::config::ClusterConfig,
        local: &str,
        node: &str,
        api_port: u16,
        token: Option<String>,
        tls: std::sync::Arc<crate::tls::ClusterTls>,
    ) -> Result<HttpPeer, String> {
        let n = cfg.nodes.get(node).ok_or_else(|| format!("{node} is not in [nodes]"))?;
        let ip = n.peer_ip().ok_or_else(|| format!("{node} has no peer-link or static management address"))?;
        Ok(HttpPeer {
            local: local.into(),
            node: node.into(),
            addr: format!("{ip}:{api_port}"),
            token,
            tls,
            timeout: Duration::from_secs(40),
        })
    }

    /// Sends a request; its answer as `T`.
    pub fn send<T: serde::de::DeserializeOwned>(&self, req: &Request) -> Result<T, CallError> {
        let ep = Endpoint::Tls { addr: self.addr.clone(), name: self.node.clone(), config: self.tls.client.clone() };
        send(&ep, req, self.token.as_deref(), self.timeout)
    }

    fn status(&self) -> Result<Status, String> {
        self.send(&Request::Read(Read::Status)).map_err(|e| format!("{}: {e}", self.addr))
    }

    /// A narrow read, or the whole status from a peer that predates it.
    fn read<T: serde::de::DeserializeOwned>(
        &self,
        read: Read,
        from_status: impl FnOnce(Status) -> T,
    ) -> Result<T, String> {
        match self.send(&Request::Read(read)) {
            Ok(t) => Ok(t),
            Err(CallError::Refused { code: 404, .. }) => self.status().map(from_status),
            Err(e) => Err(format!("{}: {e}", self.addr)),
        }
    }

    /// What this peer says about `guest` (`GET /v1/guests/<name>`).
    pub fn about(&self, guest: &str) -> Answer {
        let here = self.read(Read::Guest(guest.to_string()), |s| GuestHere {
            guest: s.guests.into_iter().find(|g| g.name == guest),
            node: s.node,
        });
        match here {
            Ok(GuestHere { guest: Some(g), .. }) => match (g.state, g.runs_on) {
                (GuestState::Elsewhere, Some(node)) => Answer::Elsewhere(node),
                (state, _) => Answer::State(state),
            },
            Ok(GuestHere { guest: None, .. }) => Answer::Absent,
            Err(e) => Answer::Unreachable(e),
        }
    }

    /// This peer's drain and memory (`GET /v1/capacity`).
    pub fn capacity(&self) -> Result<Capacity, String> {
        self.read(Read::Capacity, |s| Capacity {
            node: s.node,
            drained: s.drained,
            shutting_down: s.shutting_down.is_some(),
            memory: s.memory,
            drained_nodes: s.drained_nodes,
        })
    }

    /// A peer call that answers with a message; a refusal carries the peer's HTTP code.
    pub fn call(&self, req: Peer) -> Result<Done, PeerError> {
        self.send(&Request::Peer(req)).map_err(peer_error)
    }
}

/// A refusal is only an answer the peer gave after deciding (a 4xx: it did not do it); a busy
/// peer (503), a server error or a timeout may have done it, or may still: that is not a
/// refusal but no answer, which a migration takes as in doubt.
fn peer_error(e: CallError) -> PeerError {
    match e {
        CallError::Unreachable(e) => PeerError::Unreachable(e),
        CallError::Refused { code, message } if (400..500).contains(&code) && code != 408 && code != 429 => {
            PeerError::Refused(format!("HTTP {code}: {message}"))
        }
        CallError::Refused { code, message } => {
            PeerError::Unreachable(format!("HTTP {code}: {message} (no decision: the call may have taken effect)"))
        }
    }
}

impl MigrationPeer for HttpPeer {
    fn prepare(&mut self, guest: &str, caps: &[String]) -> Result<u16, PeerError> {
        let req = Peer::Incoming {
            guest: guest.into(),
            from: self.local.clone(),
            caps: caps.to_vec(),
            release: Some(crate::image_version()),
        };
        self.send::<Listening>(&Request::Peer(req)).map(|l| l.port).map_err(peer_error)
    }
    fn resume(&mut self, guest: &str) -> Result<(), PeerError> {
        self.call(Peer::IncomingResume { guest: guest.into(), from: self.local.clone() }).map(|_| ())
    }
    fn abort(&mut self, guest: &str) -> Result<(), PeerError> {
        self.call(Peer::IncomingAbort { guest: guest.into(), from: self.local.clone() }).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_destination_is_no_answer_not_a_refusal() {
        let busy = CallError::Refused { code: 503, message: "the supervisor did not answer in time".into() };
        assert!(matches!(peer_error(busy), PeerError::Unreachable(_)), "a 503 may still resume the guest there");
        let failed = CallError::Refused { code: 500, message: "?".into() };
        assert!(matches!(peer_error(failed), PeerError::Unreachable(_)));
        let no = CallError::Refused { code: 409, message: "blade2 cannot resume guest web".into() };
        assert_eq!(peer_error(no), PeerError::Refused("HTTP 409: blade2 cannot resume guest web".into()));
    }
}
