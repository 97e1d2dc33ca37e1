//! bladevisor: PID 1, service supervisor, API and CLI of a blade hypervisor appliance.
//!
//! The tree follows the boot: `pid1` (what only PID 1 does: mounts, reaping, signals, shutdown),
//! `supervisor` (services and their restarts), `config` (the types everyone shares), `api`
//! (HTTP on the control socket and the management network) and `cli` (the operator's command).

pub mod api;
pub mod cli;
pub mod cmdline;
pub mod config;
pub mod coord;
pub mod httpc;
pub mod logging;
pub mod migration;
pub mod net;
pub mod pid1;
pub mod proto;
pub mod qemu;
pub mod storage;
pub mod supervisor;

use std::path::PathBuf;

/// Runs `f` on a named thread; a panic in it is caught and logged instead of taking PID 1 down.
pub fn spawn_worker<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    let n = name.to_string();
    let res = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            tracing::error!(worker = %n, "worker panicked: {}", panic_message(&p));
        }
    });
    if let Err(e) = res {
        tracing::error!(worker = %name, "cannot start worker thread: {e}");
    }
}

pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Runtime state (control socket): `/run/bladevisor`, or `BLADEVISOR_RUN` in tests.
pub fn run_dir() -> PathBuf {
    std::env::var_os("BLADEVISOR_RUN").map(PathBuf::from).unwrap_or_else(|| "/run/bladevisor".into())
}

/// The image version: baked into `/etc/bladevisor/version` by the image build.
pub fn image_version() -> String {
    std::fs::read_to_string(config::etc_dir().join("version"))
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| format!("{}-dev", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panicking_worker_is_caught_and_the_caller_goes_on() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        super::spawn_worker("boom", move || {
            let _guard = tx; // dropped during unwinding: the channel closes
            panic!("worker exploded");
        });
        // The worker's panic ends the worker, not this thread: the channel just closes.
        assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).is_err());
        let p: Box<dyn std::any::Any + Send> = Box::new("text");
        assert_eq!(super::panic_message(&p), "text");
    }
}
