//! `[migration]`: how live migrations run, the same on every blade.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{find_key_line, ConfigError};

/// `[migration]` in the cluster configuration: the same on every blade.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// TCP ports a destination listens on for incoming streams: `first-last`.
    #[serde(default = "ports")]
    pub ports: String,
    /// The pause QEMU may take at switchover, to start with.
    #[serde(default = "downtime")]
    pub downtime_limit_ms: u64,
    /// What the downtime limit may be raised to when a migration does not converge.
    #[serde(default = "max_downtime")]
    pub max_downtime_ms: u64,
    /// Bandwidth cap for one migration stream, in Mbit/s.
    #[serde(default = "bandwidth", deserialize_with = "crate::config::values::bandwidth")]
    pub max_bandwidth_mbps: f64,
    /// Not converged after this long: the downtime limit is doubled (and again after as long).
    #[serde(default = "converge_after", deserialize_with = "crate::config::values::seconds")]
    pub converge_after_s: f64,
    /// Not completed after this long: cancelled, the guest stays on the source.
    #[serde(default = "timeout", deserialize_with = "crate::config::values::seconds")]
    pub timeout_s: f64,
    /// Migrations an evacuation runs at once.
    #[serde(default = "one")]
    pub parallel: usize,
    /// QEMU migration capabilities set on both sides (`events` is always set).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn ports() -> String {
    "49152-49215".into()
}
fn downtime() -> u64 {
    300
}
fn max_downtime() -> u64 {
    5000
}
fn bandwidth() -> f64 {
    8000.0
}
fn converge_after() -> f64 {
    60.0
}
fn timeout() -> f64 {
    600.0
}
fn one() -> usize {
    1
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ports: ports(),
            downtime_limit_ms: downtime(),
            max_downtime_ms: max_downtime(),
            max_bandwidth_mbps: bandwidth(),
            converge_after_s: converge_after(),
            timeout_s: timeout(),
            parallel: one(),
            capabilities: vec![],
        }
    }
}

impl Settings {
    /// The listening port range, when `ports` is well formed.
    pub fn port_range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let (a, b) = self.ports.split_once('-')?;
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0 && a <= b).then_some(a..=b)
    }

    /// The capabilities both sides set: `events` first, then the configured ones.
    pub fn all_capabilities(&self) -> Vec<String> {
        let mut caps = vec!["events".to_string()];
        caps.extend(self.capabilities.iter().filter(|c| *c != "events").cloned());
        caps
    }

    pub fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |key: &str, msg: String| match find_key_line(text, "migration", key) {
            Some(l) => ConfigError::at_line(file, l, msg),
            None => ConfigError::new(file, msg),
        };
        if self.port_range().is_none() {
            return Err(at("ports", format!("migration ports {:?} must be first-last, e.g. 49152-49215", self.ports)));
        }
        if self.downtime_limit_ms == 0
            || self.max_downtime_ms < self.downtime_limit_ms
            || self.max_downtime_ms > 600_000
        {
            return Err(at(
                "max-downtime-ms",
                "migration: need 0 < downtime-limit-ms <= max-downtime-ms <= 600000 (ten minutes)".into(),
            ));
        }
        for (key, v) in [("timeout-s", self.timeout_s), ("converge-after-s", self.converge_after_s)] {
            if v <= 0.0 {
                return Err(at(key, format!("migration: {key} must be > 0")));
            }
        }
        if !(1..=MAX_PARALLEL).contains(&self.parallel) {
            return Err(at("parallel", format!("migration: parallel must be 1-{MAX_PARALLEL}")));
        }
        if self.capabilities.len() > 32 {
            return Err(at("capabilities", "migration: at most 32 capabilities".into()));
        }
        if let Some(c) = self.capabilities.iter().find(|c| !is_capability_name(c)) {
            return Err(at("capabilities", format!("migration: {c:?} is not a QEMU capability name")));
        }
        Ok(())
    }
}

/// Migrations an evacuation may run at once.
pub const MAX_PARALLEL: usize = 64;
/// What a bandwidth cap may be (Mbit/s): finite, above zero, at most 1 Tbit/s.
pub const BANDWIDTH_RANGE: &str = "a bandwidth cap must be a number of Mbit/s above 0 and at most 1000000";

pub fn valid_bandwidth(mbps: f64) -> bool {
    mbps.is_finite() && mbps > 0.0 && mbps <= 1_000_000.0
}

/// Whether `c` has the shape of a QEMU migration capability name (what a peer may ask for).
pub fn is_capability_name(c: &str) -> bool {
    !c.is_empty() && c.chars().all(|x| x.is_ascii_lowercase() || x == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_validate_with_lines() {
        let s = Settings::default();
        assert_eq!(s.port_range(), Some(49152..=49215));
        assert_eq!(s.all_capabilities(), vec!["events"]);
        let text = "[migration]\nports = \"9-2\"\n";
        let bad: Settings = toml::from_str::<toml::Table>(text).unwrap()["migration"].clone().try_into().unwrap();
        let e = bad.validate(Path::new("c.toml"), text).unwrap_err().to_string();
        assert_eq!(e, "c.toml:2: migration ports \"9-2\" must be first-last, e.g. 49152-49215");
        let text = "[migration]\ncapabilities = [\"x-colo; rm\"]\n";
        let bad: Settings = toml::from_str::<toml::Table>(text).unwrap()["migration"].clone().try_into().unwrap();
        assert!(bad.validate(Path::new("c.toml"), text).unwrap_err().to_string().contains("not a QEMU capability"));
    }
}
