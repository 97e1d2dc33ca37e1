//! The API: HTTP with JSON bodies, served on the local control socket (root only) and, later
//! in boot, on the management network; and the client side of the same routes (the CLI's and
//! the peers'). Handlers do no work themselves: they route a URL to a [`Request`], hand it to
//! the [`Dispatch`] PID 1 gave them, and render its [`Reply`]. Status codes are decided here.

pub mod client;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod server;

use std::path::Path;

use crate::proto::request::{Reply, Request};

/// How a listener hands a request to whoever answers it (PID 1's main loop), waiting for the
/// reply. The API knows nothing of the loop behind it.
pub type Dispatch = std::sync::Arc<dyn Fn(Request) -> Reply + Send + Sync>;

/// Who may make mutating calls on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The local control socket: root only by its file mode.
    Local,
    /// The network: `Authorization: Bearer <token>`, an operator's or the blades' peer token.
    Keys(crate::config::credentials::Keys),
    /// Plain HTTP, or a blade without credentials: only the status and the metrics, every
    /// other call refused with this reason.
    ReadOnly(String),
}

/// Starts the control socket `<run_dir>/control.sock` (mode 0600: root only, no token).
pub fn serve_control(run_dir: &Path, dispatch: Dispatch) -> Result<(), String> {
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
    let api = std::sync::Arc::new(http::Api::new(dispatch, Auth::Local, "control"));
    server::serve(server::Listener::Unix(listener), api, server::Limits::default(), "control")
}

/// Starts the read-only API on TCP `port` of every address: plain HTTP, the status and the
/// metrics only (`why` says where everything else is).
pub fn serve_plain(port: u16, why: String, dispatch: Dispatch) -> Result<(), String> {
    let listener =
        std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("cannot listen on TCP port {port}: {e}"))?;
    let api = std::sync::Arc::new(http::Api::new(dispatch, Auth::ReadOnly(why), "http"));
    server::serve(server::Listener::Tcp(listener), api, server::Limits::default(), "http")
}

/// Starts the API on TCP `port` of every address with TLS: every call, each checked.
pub fn serve_tls(
    port: u16,
    keys: crate::config::credentials::Keys,
    tls: &crate::tls::ClusterTls,
    dispatch: Dispatch,
) -> Result<(), String> {
    let listener =
        std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("cannot listen on TCP port {port}: {e}"))?;
    let api = std::sync::Arc::new(http::Api::new(dispatch, Auth::Keys(keys), "https"));
    server::serve(server::Listener::Tls(listener, tls.server.clone()), api, server::Limits::default(), "https")
}
