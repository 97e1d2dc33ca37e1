//! Talking to another blade's supervisor over its authenticated API.

use std::time::Duration;

use crate::coord::owner::Answer;
use crate::httpc::{call, Endpoint};
use crate::migration::{Peer, PeerError};
use crate::proto::Status;

/// Another blade's API: its name, `ip:port`, and the cluster's token.
#[derive(Debug, Clone)]
pub struct HttpPeer {
    /// This blade's name, sent along so the peer can log who asked.
    pub local: String,
    pub node: String,
    pub addr: String,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl HttpPeer {
    /// The peer `node` of the cluster, or why it cannot be reached.
    pub fn of(cfg: &crate::config::ClusterConfig, local: &str, node: &str, api_port: u16) -> Result<HttpPeer, String> {
        let n = cfg.nodes.get(node).ok_or_else(|| format!("{node} is not in [nodes]"))?;
        let ip = n.peer_ip().ok_or_else(|| format!("{node} has no peer-link or static management address"))?;
        Ok(HttpPeer {
            local: local.into(),
            node: node.into(),
            addr: format!("{ip}:{api_port}"),
            token: cfg.cluster.token.clone(),
            timeout: Duration::from_secs(40),
        })
    }

    /// A POST; a 2xx answer's body, a refusal (any other answer) or unreachable.
    pub fn post(&self, path: &str) -> Result<String, PeerError> {
        let r = call(&Endpoint::Tcp(self.addr.clone()), "POST", path, self.token.as_deref(), self.timeout)
            .map_err(|e| PeerError::Unreachable(e.to_string()))?;
        if (200..300).contains(&r.code) {
            Ok(r.body)
        } else {
            let msg = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(r.body);
            Err(PeerError::Refused(format!("HTTP {}: {msg}", r.code)))
        }
    }

    pub fn status(&self) -> Result<Status, String> {
        let r = call(&Endpoint::Tcp(self.addr.clone()), "GET", "/v1/status", None, self.timeout)?;
        if r.code != 200 {
            return Err(format!("{}: HTTP {}", self.addr, r.code));
        }
        serde_json::from_str(&r.body)
            .map_err(|e| format!("{}: status is not what this version expects: {e}", self.addr))
    }

    /// What this peer says about `guest`.
    pub fn about(&self, guest: &str) -> Answer {
        match self.status() {
            Ok(s) => match s.guests.iter().find(|g| g.name == guest) {
                Some(g) => Answer::State(g.state),
                None => Answer::Absent,
            },
            Err(e) => Answer::Unreachable(e),
        }
    }
}

impl Peer for HttpPeer {
    fn prepare(&mut self, guest: &str, caps: &[String]) -> Result<u16, PeerError> {
        let body = self.post(&format!("/v1/incoming/{guest}?from={}&caps={}", self.local, caps.join(",")))?;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| PeerError::Refused(format!("no port in the answer: {body}")))
    }
    fn resume(&mut self, guest: &str) -> Result<(), PeerError> {
        self.post(&format!("/v1/incoming/{guest}/resume")).map(|_| ())
    }
    fn abort(&mut self, guest: &str) -> Result<(), PeerError> {
        self.post(&format!("/v1/incoming/{guest}/abort")).map(|_| ())
    }
}
