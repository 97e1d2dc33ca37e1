//! Configuration: the types every part of bladevisor shares (supervisor, API, CLI), their
//! parsers, and errors that name the file, line and key.

pub mod aliases;
pub mod cluster;
pub mod credentials;
pub mod error;
pub mod fetch;
pub mod guest;
pub mod ha;
pub mod libvirt;
pub mod migration;
pub mod order;
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

/// Writes a file that holds credentials (the fetched configuration, with the cluster's token):
/// readable by root only, from its first byte (guests' QEMUs run as other users on this blade).
pub fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file)?;
    // An older copy may have been created with other permissions.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

pub fn load_image(file: &Path) -> Result<services::ImageConfig, ConfigError> {
    services::parse_image(file, &read(file)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_with_credentials_is_root_only_even_over_an_older_copy() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cluster.toml");
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_private(&f, "token = \"x\"").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "token = \"x\"");
    }
}
