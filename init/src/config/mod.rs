//! Configuration: the types every part of bladevisor shares (supervisor, API, CLI), their
//! parsers, and errors that name the file, line and key.

pub mod cluster;
pub mod error;
pub mod fetch;
pub mod services;
pub mod values;

pub use cluster::{ClusterConfig, Node};
pub use error::ConfigError;
pub use services::{RestartPolicy, ServiceSpec};

use std::path::{Path, PathBuf};

/// Where the configuration lives. `/etc/bladevisor` on a blade; tests point it elsewhere with
/// `BLADEVISOR_ETC`.
pub fn etc_dir() -> PathBuf {
    std::env::var_os("BLADEVISOR_ETC").map(PathBuf::from).unwrap_or_else(|| "/etc/bladevisor".into())
}

/// Reads a file, turning an I/O failure into a ConfigError that names it.
pub fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| ConfigError::new(file, format!("cannot read: {e}")))
}

pub fn load_image(file: &Path) -> Result<services::ImageConfig, ConfigError> {
    services::parse_image(file, &read(file)?)
}
