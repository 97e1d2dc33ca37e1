//! The lab's credentials, made at start as an operator makes them (`bladevisor credentials`):
//! one CA for the test process, a credentials file per blade served with the configuration,
//! and the CA's certificate where the CLI and the lab's own client find it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bladevisor::config::credentials::Credentials;
use bladevisor::tls::pki::{issue, new_ca, Issued, BLADE_DAYS};

/// The lab's peer token, in each blade's credentials file (never in a configuration).
pub const LAB_PEER_TOKEN: &str = "lab-peer-token-change-me";
/// The credentials files' names in the lab's served folder (`{node}`: the blade's name), and
/// the URL path blades fetch theirs from.
pub const CREDENTIALS: &str = "credentials-{node}.toml";

pub struct LabPki {
    pub ca: Issued,
    /// The CA certificate's file (the CLI's `--ca`).
    pub ca_file: PathBuf,
    /// What the lab's own calls verify blades with.
    pub operator: Arc<rustls::ClientConfig>,
}

/// The test process's CA, made on first use.
pub fn lab_pki() -> &'static LabPki {
    static PKI: OnceLock<LabPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = new_ca("lab").expect("the lab CA");
        let dir = crate::repo_root().join("target/lab");
        std::fs::create_dir_all(&dir).expect("target/lab");
        // One file per process: tests running at once in other processes have their own CA.
        let ca_file = dir.join(format!("ca-{}.pem", std::process::id()));
        std::fs::write(&ca_file, &ca.cert).expect("the lab CA's file");
        let operator = bladevisor::tls::operator_client("lab CA", &ca.cert).expect("a client of the lab CA");
        LabPki { ca, ca_file, operator }
    })
}

/// A credentials file for `node`, signed by `ca`.
pub fn credentials_for(ca: &Issued, node: &str, peer_token: &str) -> String {
    let b = issue(&ca.cert, &ca.key, node, &[], BLADE_DAYS).expect("a blade certificate");
    Credentials { peer_token: peer_token.into(), ca: ca.cert.clone(), cert: b.cert, key: b.key }.render()
}

/// Writes blade1's and blade2's credentials files into the served folder `www`.
pub fn serve_credentials(www: &Path) {
    for node in ["blade1", "blade2"] {
        let text = credentials_for(&lab_pki().ca, node, LAB_PEER_TOKEN);
        std::fs::write(www.join(CREDENTIALS.replace("{node}", node)), text).expect("a credentials file");
    }
}

/// A client that presents `node`'s certificate from the lab CA (what that blade presents to
/// others), verifying servers with the lab CA.
pub fn blade_client(node: &str) -> Arc<rustls::ClientConfig> {
    let ca = &lab_pki().ca;
    let b = issue(&ca.cert, &ca.key, node, &[], BLADE_DAYS).expect("a blade certificate");
    client_presenting(&ca.cert, &b)
}

/// A client that presents a certificate for `node` signed by another CA (an attacker's),
/// verifying servers with the lab CA.
pub fn foreign_client(node: &str) -> Arc<rustls::ClientConfig> {
    let other = new_ca("mallory").expect("another CA");
    let b = issue(&other.cert, &other.key, node, &[], BLADE_DAYS).expect("a foreign certificate");
    client_presenting(&lab_pki().ca.cert, &b)
}

fn client_presenting(ca: &str, who: &Issued) -> Arc<rustls::ClientConfig> {
    bladevisor::tls::client_presenting_pem("lab client", ca, &who.cert, &who.key).expect("a client certificate")
}
