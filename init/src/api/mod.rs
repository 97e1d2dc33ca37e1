//! The operator's API: HTTP with JSON bodies, served on the local control socket (root only)
//! and, later in boot, on the management network. Handlers do no work themselves: they pass a
//! [`Request`] to PID 1's main loop, which owns all state, and send back its [`Reply`].

pub mod http;
pub mod peer;
pub mod server;

use std::path::Path;
use std::sync::mpsc::Sender;

use crate::pid1::Event;
use crate::proto::PowerAction;
pub use crate::proto::{ServiceAction, Status};

/// What the main loop is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Status,
    Power(PowerAction),
    Service {
        name: String,
        action: ServiceAction,
    },
    /// From the boot sequence: run a service decided at boot.
    AddService(Box<crate::config::ServiceSpec>),
    /// From the boot sequence: it is done.
    BootDone(Box<crate::pid1::boot::BootOutcome>),
    /// An operator's action on a guest; `force` starts it even where another blade may run it.
    Guest {
        name: String,
        action: ServiceAction,
        force: bool,
    },
    /// Live-migrate a guest from this blade to `to`, optionally with a bandwidth cap (Mbit/s).
    Migrate {
        guest: String,
        to: String,
        bandwidth_mbps: Option<f64>,
    },
    /// Cancel this blade's outgoing migration of a guest.
    MigrateCancel(String),
    /// Settle a guest left in doubt by a migration: ask its destination again, then keep
    /// exactly one copy.
    Resolve(String),
    /// From a peer: start this guest paused, listening for its migration stream.
    Incoming {
        guest: String,
        from: String,
        caps: Vec<String>,
    },
    /// From the source: the stream is complete, run the guest.
    IncomingResume(String),
    /// From the source: the migration failed, remove the incoming process.
    IncomingAbort(String),
    /// Mark this blade drained and migrate every guest off it.
    Evacuate {
        parallel: Option<usize>,
    },
    /// Accept guests again.
    Undrain,
    /// One migration's outcome (what an evacuation polls: cheaper than a whole status).
    MigrationOutcome(u64),
    /// One raw QMP command to a guest's QEMU, bypassing the supervisor's bookkeeping (for
    /// diagnosis, and for the benchmark's floor: QEMU's own migration driven directly).
    GuestQmp {
        guest: String,
        command: serde_json::Value,
    },
    /// From a peer: it is drained (or not) now.
    PeerDrained {
        node: String,
        drained: bool,
    },
    /// A guest's console from `offset` on.
    Console {
        name: String,
        offset: u64,
    },
    /// Re-read the alias table; the reply comes from the worker that does it.
    StorageReload,
    /// One service's state (what the boot sequence polls: cheaper than a whole status).
    ServiceState(String),
}

/// How long a caller waits for the main loop before giving up.
/// Long enough for an answer a worker gives (an incoming guest's listener, an owner check).
const LOOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks the main loop and waits for its reply (503 when it does not answer).
pub fn ask(tx: &Sender<Event>, req: Request) -> Reply {
    let (rtx, rrx) = std::sync::mpsc::channel();
    if tx.send(Event::Api(req, rtx)).is_err() {
        return Reply::Error(503, "the supervisor is not running".into());
    }
    rrx.recv_timeout(LOOP_TIMEOUT).unwrap_or_else(|_| Reply::Error(503, "the supervisor did not answer in time".into()))
}

/// Who may make mutating calls on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The local control socket: root only by its file mode.
    Local,
    /// The network: `Authorization: Bearer <token>`.
    Token(String),
    /// The network, with no token configured: mutating (and LUN-reading) calls are refused.
    ReadOnly,
}

/// What it answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(Box<Status>),
    Ok(String),
    /// HTTP status code and a message for the operator.
    Error(u16, String),
    /// A JSON document.
    Json(serde_json::Value),
    /// The state of one service, None when there is no such service.
    ServiceState(Option<crate::supervisor::ServiceState>),
    /// The answer will be sent later, by a worker (internal to the main loop).
    Deferred,
}

/// Starts the control socket `<run_dir>/control.sock` (mode 0600: root only, no token).
pub fn serve_control(run_dir: &Path, tx: Sender<Event>) -> Result<(), String> {
    std::fs::create_dir_all(run_dir).map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    // Guests' QEMUs (other users) pass through to their own folders; they may not list it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("cannot restrict {}: {e}", run_dir.display()))?;
    let sock = run_dir.join("control.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .map_err(|e| format!("cannot listen on {}: {e}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make {} root-only: {e}", sock.display()))?;
    let api = std::sync::Arc::new(http::Api::new(tx, Auth::Local, "control"));
    server::serve(server::Listener::Unix(listener), api, server::Limits::default(), "control")
}

/// Starts the API on TCP `port` of every address (the management network's included).
pub fn serve_tcp(port: u16, auth: Auth, tx: Sender<Event>) -> Result<(), String> {
    let listener =
        std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("cannot listen on TCP port {port}: {e}"))?;
    let api = std::sync::Arc::new(http::Api::new(tx, auth, "tcp"));
    server::serve(server::Listener::Tcp(listener), api, server::Limits::default(), "tcp")
}
