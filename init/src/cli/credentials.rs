//! `bladevisor credentials`: the cluster's CA, peer token and blades' credentials files, made
//! on the operator's machine (the CA key never goes to a blade), and where the CLI finds the
//! blade it talks to and the CA it verifies it with.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::credentials::{new_token, parse_credentials, Credentials};
use crate::httpc::Endpoint;
use crate::tls::pki;

/// Writes a secret file, readable by its owner only, refusing to replace one.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

use super::read_text as read;

/// `credentials init <dir>`: a new CA and peer token for a cluster. Refuses a folder that
/// already holds a CA (that would orphan every blade's certificate).
pub fn init(dir: &Path, cluster: &str) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = pki::new_ca(cluster)?;
    let files = [("ca.pem", ca.cert, 0o644), ("ca-key.pem", ca.key, 0o600), ("peer-token", new_token()? + "\n", 0o600)];
    if let Some((n, ..)) = files.iter().find(|(n, ..)| dir.join(n).exists()) {
        return Err(format!(
            "{}: already there: this folder has a CA (remove it only to start over)",
            dir.join(n).display()
        ));
    }
    files.iter().map(|(n, text, mode)| write_new(&dir.join(n), text, *mode).map(|_| dir.join(n))).collect()
}

/// `credentials issue <dir> <node>`: blade `node`'s credentials file, `<dir>/<node>.toml`,
/// replacing an earlier one (rotation: the blade takes it at its next boot).
pub fn issue(dir: &Path, node: &str, ips: &[IpAddr], days: i64) -> Result<PathBuf, String> {
    if !crate::config::services::is_safe_name(node) {
        return Err(format!("{node:?}: blade names are letters, digits, '-' and '_'"));
    }
    let ca = read(&dir.join("ca.pem"))?;
    let b = pki::issue(&ca, &read(&dir.join("ca-key.pem"))?, node, ips, days)?;
    let peer_token = read(&dir.join("peer-token"))?.trim().to_string();
    let creds = Credentials { peer_token, ca, cert: b.cert, key: b.key };
    let out = dir.join(format!("{node}.toml"));
    // Checked as the blade will check it before it is handed out.
    let text = creds.render();
    parse_credentials(&out.display().to_string(), &text)?.tls(&out.display().to_string(), node)?;
    let tmp = dir.join(format!(".{node}.toml.new"));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, &text, 0o600)?;
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// Where the CLI sends its calls: the control socket (no `api`); a blade's plain port
/// (`http://host[:port]`: the status and the metrics only); or its TLS port (`https://` or no
/// scheme, port 7443 unless given), whose certificate must name `server_name` (default: the
/// host) and be signed by the CA in `ca`.
pub fn endpoint(api: Option<&str>, ca: Option<&Path>, server_name: Option<&str>) -> Result<Endpoint, String> {
    let Some(api) = api else { return Ok(Endpoint::Unix(crate::run_dir().join("control.sock"))) };
    let api = api.trim_end_matches('/');
    let with_port = |hostport: &str, port: u16| {
        if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            hostport.to_string()
        } else {
            format!("{hostport}:{port}")
        }
    };
    if let Some(plain) = api.strip_prefix("http://") {
        return Ok(Endpoint::Tcp(with_port(plain, 7480)));
    }
    let addr = with_port(api.strip_prefix("https://").unwrap_or(api), 7443);
    let ca = ca.ok_or_else(|| {
        format!("https://{addr}: the cluster CA is needed to check the blade: --ca <ca.pem> or BLADEVISOR_CA")
    })?;
    let config = crate::tls::operator_client(&ca.display().to_string(), &read(ca)?)?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
    let name = server_name.unwrap_or(host).trim_start_matches('[').trim_end_matches(']').to_string();
    Ok(Endpoint::Tls { addr, name, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_folder_issues_blades_credentials_and_refuses_a_second_ca() {
        let d = tempfile::tempdir().unwrap();
        let made = init(d.path(), "lab").unwrap();
        assert_eq!(made.len(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("ca-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the CA key is the owner's only");
        let e = init(d.path(), "lab").unwrap_err();
        assert!(e.contains("ca.pem: already there"), "{e}");
        let f = issue(d.path(), "blade1", &["10.0.0.1".parse().unwrap()], 30).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        let c = parse_credentials("blade1.toml", &text).unwrap();
        assert!(c.tls("blade1.toml", "blade1").is_ok());
        assert_eq!(c.peer_token, std::fs::read_to_string(d.path().join("peer-token")).unwrap().trim());
        assert!(issue(d.path(), "blade1", &[], 30).is_ok(), "reissued (rotation) in place");
        assert!(issue(d.path(), "../x", &[], 30).unwrap_err().contains("blade names are"));
    }

    #[test]
    fn the_cli_endpoint_is_tls_unless_told_plain_and_needs_the_ca() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), "lab").unwrap();
        let ca = d.path().join("ca.pem");
        let ep = endpoint(Some("blade1"), Some(&ca), None).unwrap();
        assert!(matches!(&ep, Endpoint::Tls { addr, name, .. } if addr == "blade1:7443" && name == "blade1"));
        let ep = endpoint(Some("https://127.0.0.1:9443/"), Some(&ca), Some("blade2")).unwrap();
        assert!(matches!(&ep, Endpoint::Tls { addr, name, .. } if addr == "127.0.0.1:9443" && name == "blade2"));
        assert_eq!(ep.to_string(), "https://127.0.0.1:9443 (blade2)");
        assert!(matches!(endpoint(Some("http://blade1"), None, None).unwrap(), Endpoint::Tcp(a) if a == "blade1:7480"));
        let e = endpoint(Some("blade1"), None, None).unwrap_err();
        assert!(e.contains("--ca <ca.pem> or BLADEVISOR_CA"), "{e}");
        assert!(matches!(endpoint(None, None, None).unwrap(), Endpoint::Unix(_)));
    }
}
