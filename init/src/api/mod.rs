//! The operator's API: HTTP with JSON bodies, served on the local control socket (root only)
//! and, later in boot, on the management network. Handlers do no work themselves: they pass a
//! [`Request`] to PID 1's main loop, which owns all state, and send back its [`Reply`].

pub mod client;
pub mod http;

use std::path::Path;
use std::sync::mpsc::Sender;

use serde::{Deserialize, Serialize};

use crate::pid1::shutdown::PowerAction;
use crate::pid1::Event;
use crate::supervisor::ServiceStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

impl ServiceAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "start" => Some(ServiceAction::Start),
            "stop" => Some(ServiceAction::Stop),
            "restart" => Some(ServiceAction::Restart),
            _ => None,
        }
    }
}

/// What the main loop is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Status,
    Power(PowerAction),
    Service { name: String, action: ServiceAction },
}

/// What it answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(Box<Status>),
    Ok(String),
    /// HTTP status code and a message for the operator.
    Error(u16, String),
}

/// `GET /v1/status`: one JSON object describing the blade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub ready: bool,
    /// Milliseconds from kernel start to ready.
    pub ready_ms: Option<u64>,
    pub uptime_s: f64,
    pub shutting_down: Option<PowerAction>,
    /// Why the blade is not fully healthy, one line per reason.
    pub degraded: Vec<String>,
    pub orphans_reaped: u64,
    pub services: Vec<ServiceStatus>,
}

/// Starts the control socket `<run_dir>/control.sock` (mode 0600: root only, no token).
pub fn serve_control(run_dir: &Path, tx: Sender<Event>) -> Result<(), String> {
    std::fs::create_dir_all(run_dir).map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    let sock = run_dir.join("control.sock");
    let _ = std::fs::remove_file(&sock);
    let server =
        tiny_http::Server::http_unix(&sock).map_err(|e| format!("cannot listen on {}: {e}", sock.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600));
    http::serve(server, tx, None, "control");
    Ok(())
}
