//! bladevisor: PID 1, service supervisor, API and CLI of a blade hypervisor appliance.
//!
//! The tree follows the boot: `pid1` (what only PID 1 does: mounts, reaping, signals, shutdown),
//! `supervisor` (services and their restarts), `config` (the types everyone shares), `api`
//! (HTTP on the control socket and the management network) and `cli` (the operator's command).

pub mod api;
pub mod child;
pub mod cli;
pub mod cmdline;
pub mod config;
pub mod coord;
pub mod httpc;
pub mod leases;
pub mod logging;
pub mod migration;
pub mod net;
pub mod pid1;
pub mod proto;
pub mod qemu;
pub mod release;
pub mod storage;
pub mod supervisor;
pub mod tls;

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
    /// The README's layout, lowest first: a module may use only modules of its own layer or
    /// below. Shared types sit low, decisions in the middle, effects at the top.
    const LAYERS: &[&[&str]] = &[
        &["logging", "cmdline", "tls", "httpc", "child"],
        &["config"],
        &["net"],
        &["qemu"],
        &["supervisor", "storage", "leases"],
        &["migration", "release"],
        &["proto"],
        &["coord"],
        &["api"],
        &["pid1"],
        &["cli"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        sources(&src, &mut files);
        let mut wrong = vec![];
        for f in files {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let module = rel.split(['/', '.']).next().unwrap_or("").to_string();
            let Some(own) = layer(&module) else { continue };
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let used: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if layer(&used).is_some_and(|l| l > own) {
                    wrong.push(format!("{rel} uses crate::{used}"));
                }
            }
        }
        wrong.sort();
        wrong.dedup();
        assert!(wrong.is_empty(), "modules that use one above them (see the README's layout): {wrong:#?}");
        assert!(LAYERS
            .iter()
            .flat_map(|l| l.iter())
            .all(|m| src.join(m).exists() || src.join(format!("{m}.rs")).exists()));
    }

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
