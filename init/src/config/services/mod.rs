//! The image's own configuration (`/etc/bladevisor/image.toml`): what the boot sequence does
//! (`[boot]`) and which daemons the blade runs, in what order, and how they are restarted (one
//! `[services.<name>]` table per daemon). It is baked into the image, because which daemons exist
//! is a property of the image, not of the cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{find_key_line, ConfigError};

/// Whether a service that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status was.
    #[default]
    Always,
    /// Restart only after a non-zero exit or a death by signal.
    OnFailure,
    /// Run once.
    Never,
}

/// How the supervisor knows a started service is ready for its dependents.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Readiness {
    /// Ready once this path exists (a control socket, a pid file).
    pub path: Option<String>,
    /// Ready once a TCP connection to this `host:port` succeeds.
    pub tcp: Option<String>,
    /// Give up waiting after this many seconds and treat the start as failed.
    #[serde(default = "default_ready_timeout", deserialize_with = "crate::config::values::seconds")]
    pub timeout_s: f64,
}

fn default_ready_timeout() -> f64 {
    30.0
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness { path: None, tcp: None, timeout_s: default_ready_timeout() }
    }
}

/// Exponential backoff between restarts, with a cap and a give-up threshold.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Backoff {
    /// Delay before the first restart.
    #[serde(default = "default_initial", deserialize_with = "crate::config::values::seconds")]
    pub initial_s: f64,
    /// Each further restart waits this many times longer...
    #[serde(default = "default_factor", deserialize_with = "crate::config::values::factor")]
    pub factor: f64,
    /// ...up to this cap.
    #[serde(default = "default_max", deserialize_with = "crate::config::values::seconds")]
    pub max_s: f64,
    /// A service that ran this long counts as healthy again: its backoff starts over.
    #[serde(default = "default_reset", deserialize_with = "crate::config::values::seconds")]
    pub reset_after_s: f64,
    /// After this many restarts without a healthy run in between, the service is marked failed
    /// and left alone until an operator starts it. 0 means never give up.
    #[serde(default = "default_give_up")]
    pub give_up_after: u32,
}

fn default_initial() -> f64 {
    0.5
}
fn default_factor() -> f64 {
    2.0
}
fn default_max() -> f64 {
    30.0
}
fn default_reset() -> f64 {
    60.0
}
fn default_give_up() -> u32 {
    10
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_s: default_initial(),
            factor: default_factor(),
            max_s: default_max(),
            reset_after_s: default_reset(),
            give_up_after: default_give_up(),
        }
    }
}

impl Backoff {
    /// Delay before restart number `n` (1-based) of a run of failures.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.factor.powi(n.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_s * exp).min(self.max_s);
        super::values::secs(secs)
    }
}

/// One daemon the supervisor runs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceSpec {
    /// Filled in from the table's key.
    #[serde(skip_deserializing)]
    pub name: String,
    /// Program and arguments, executed directly (no shell).
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Services that must be ready before this one starts; stopped after it on shutdown.
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub ready: Readiness,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub backoff: Backoff,
    /// On stop: SIGTERM, then SIGKILL after this many seconds.
    #[serde(default = "default_stop_timeout", deserialize_with = "crate::config::values::seconds")]
    pub stop_timeout_s: f64,
    /// Start at boot. A service with `enabled = false` is started only on request.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A guest's QMP socket: stopping it is an ACPI power-off over QMP, not SIGTERM.
    #[serde(skip)]
    pub qmp: Option<std::path::PathBuf>,
    /// Run without root (a guest's QEMU): decided in code, never in a file.
    #[serde(skip)]
    pub unprivileged: Option<Unprivileged>,
    /// Started unable to lock memory (no CAP_IPC_LOCK, RLIMIT_MEMLOCK 0): for a daemon that
    /// mlocks everything it maps to survive a root filesystem on the SAN, which a blade's RAM
    /// root never is (multipathd: 26 MiB of RAM otherwise). Its mlockall fails, and it goes on.
    #[serde(default)]
    pub no_memory_lock: bool,
}

/// How a service runs without root, the way libvirt runs QEMU: as its own user and group with
/// no supplementary groups, after root has handed it exactly the files and devices it uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unprivileged {
    pub uid: u32,
    pub gid: u32,
    /// Handed to the user before each start (chown, following links): its run folder, its
    /// LUNs' device nodes.
    pub owns: Vec<std::path::PathBuf>,
    /// Device nodes every guest uses and that are safe to share (`/dev/kvm`: each opener gets
    /// its own VMs): opened to all (0666), where they exist. Never through a supplementary group:
    /// `/dev/kvm` may belong to root's.
    pub shared: Vec<std::path::PathBuf>,
    /// Persistent tap devices created for it (owned by the user) and attached to a bridge:
    /// `(tap, bridge)`.
    pub taps: Vec<(String, String)>,
    /// The program drops to `uid`/`gid` itself (`bladevisor lease-exec`, once it holds the
    /// guest's storage lease); PID 1 only hands the files over.
    pub drops_itself: bool,
}

fn default_stop_timeout() -> f64 {
    10.0
}
fn default_true() -> bool {
    true
}

impl ServiceSpec {
    /// A service decided in code rather than in image.toml (the management network's, a
    /// bridge's, multipathd, a guest), with the same defaults a table entry gets.
    pub fn new(name: impl Into<String>, argv: Vec<String>, restart: RestartPolicy) -> Self {
        ServiceSpec {
            name: name.into(),
            argv,
            env: BTreeMap::new(),
            after: vec![],
            ready: Readiness::default(),
            restart,
            backoff: Backoff::default(),
            stop_timeout_s: default_stop_timeout(),
            enabled: true,
            qmp: None,
            unprivileged: None,
            no_memory_lock: false,
        }
    }

    pub fn stop_timeout(&self) -> Duration {
        super::values::secs(self.stop_timeout_s)
    }
    pub fn ready_timeout(&self) -> Duration {
        super::values::secs(self.ready.timeout_s)
    }
}

/// What the boot sequence does before the blade is ready.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootSettings {
    /// Bring up the management network (off where the network is not ours, as in a test
    /// namespace).
    #[serde(default)]
    pub network: bool,
    /// How long to wait for the management address.
    #[serde(default = "default_net_timeout", deserialize_with = "crate::config::values::seconds")]
    pub network_timeout_s: f64,
    /// How long to keep retrying `bladevisor.config=<url>` before falling back to the baked copy.
    #[serde(default = "default_config_timeout", deserialize_with = "crate::config::values::seconds")]
    pub config_timeout_s: f64,
    /// Bring up storage: HBAs, SCSI scans, multipathd with the alias table (off where the
    /// storage is not ours).
    #[serde(default)]
    pub storage: bool,
    /// TCP port of the API on the management network; none without this key.
    #[serde(default)]
    pub api_port: Option<u16>,
    /// TCP port of the API over TLS (every call; the plain port serves only the status and
    /// the metrics); 7443 when `api-port` is set and this is not.
    #[serde(default)]
    pub api_tls_port: Option<u16>,
}

impl BootSettings {
    /// The TLS port, where there is an API at all.
    pub fn tls_port(&self) -> Option<u16> {
        self.api_tls_port.or(self.api_port.map(|_| 7443))
    }
}

fn default_net_timeout() -> f64 {
    30.0
}
fn default_config_timeout() -> f64 {
    30.0
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings {
            network: false,
            storage: false,
            network_timeout_s: default_net_timeout(),
            config_timeout_s: default_config_timeout(),
            api_port: None,
            api_tls_port: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    #[serde(default)]
    boot: BootSettings,
    #[serde(default)]
    services: BTreeMap<String, ServiceSpec>,
}

/// The parsed `image.toml`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageConfig {
    pub boot: BootSettings,
    pub services: Vec<ServiceSpec>,
}

/// A name safe for a cgroup directory, a log field and a URL path segment.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}

/// Parses and validates `image.toml`. Every problem names the file, and the line where it can be
/// found.
pub fn parse_image(file: &Path, text: &str) -> Result<ImageConfig, ConfigError> {
    let parsed: ImageFile = toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
    let b = &parsed.boot;
    if !(b.network_timeout_s >= 0.0 && b.config_timeout_s >= 0.0) {
        let line = find_key_line(text, "boot", "network-timeout-s")
            .or_else(|| find_key_line(text, "boot", "config-timeout-s"));
        let msg = "boot: timeouts must be non-negative numbers of seconds";
        return Err(match line {
            Some(l) => ConfigError::at_line(file, l, msg),
            None => ConfigError::new(file, msg),
        });
    }
    Ok(ImageConfig { boot: parsed.boot, services: parse_services_table(file, text, parsed.services)? })
}

/// Only the services of an `image.toml` text.
pub fn parse_services(file: &Path, text: &str) -> Result<Vec<ServiceSpec>, ConfigError> {
    parse_image(file, text).map(|c| c.services)
}

fn parse_services_table(
    file: &Path,
    text: &str,
    services: BTreeMap<String, ServiceSpec>,
) -> Result<Vec<ServiceSpec>, ConfigError> {
    let at = |name: &str, key: Option<&str>, msg: String| {
        let line = key
            .and_then(|k| find_key_line(text, &format!("services.{name}"), k))
            .or_else(|| find_key_line(text, "services", name));
        match line {
            Some(l) => ConfigError::at_line(file, l, msg),
            None => ConfigError::new(file, msg),
        }
    };
    let mut out = Vec::new();
    for (name, mut spec) in services {
        if !is_safe_name(&name) {
            return Err(at(
                &name,
                None,
                format!("service name {name:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'"),
            ));
        }
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(at(&name, Some("argv"), format!("service {name}: argv must name a program")));
        }
        if !spec.argv[0].starts_with('/') {
            return Err(at(
                &name,
                Some("argv"),
                format!(
                    "service {name}: argv[0] {:?} must be an absolute path (there is no shell and no PATH search)",
                    spec.argv[0]
                ),
            ));
        }
        let b = &spec.backoff;
        if !(b.initial_s >= 0.0 && b.factor >= 1.0 && b.max_s >= b.initial_s && b.reset_after_s >= 0.0) {
            return Err(at(
                &name,
                Some("backoff"),
                format!("service {name}: backoff needs initial-s >= 0, factor >= 1 and max-s >= initial-s"),
            ));
        }
        if !(spec.stop_timeout_s >= 0.0 && spec.stop_timeout_s.is_finite()) {
            return Err(at(
                &name,
                Some("stop-timeout-s"),
                format!("service {name}: stop-timeout-s must be a non-negative number"),
            ));
        }
        if spec.ready.path.is_some() && spec.ready.tcp.is_some() {
            return Err(at(
                &name,
                Some("ready"),
                format!("service {name}: give one readiness check, path or tcp, not both"),
            ));
        }
        if let Some(addr) = &spec.ready.tcp {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(at(
                    &name,
                    Some("ready"),
                    format!("service {name}: ready.tcp {addr:?} is not an ip:port address"),
                ));
            }
        }
        spec.name = name;
        out.push(spec);
    }
    // Dependencies: every name must exist, and there must be no cycle.
    let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    for s in &out {
        for dep in &s.after {
            if !names.contains(&dep.as_str()) {
                return Err(at(
                    &s.name,
                    Some("after"),
                    format!("service {}: depends on unknown service {dep:?}", s.name),
                ));
            }
        }
    }
    if let Err(cycle) = super::order::start_order(&out) {
        return Err(at(
            &cycle[0],
            Some("after"),
            format!("services depend on each other in a cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
