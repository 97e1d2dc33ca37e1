//! Who may change a blade, without the configuration giving it away. The configuration, which
//! any machine that can fetch it may read, names each operator with the SHA-256 of their token
//! (`[operators.<name>] token-sha256 = "..."`): one operator's token is revoked by removing its
//! section, the others untouched. The secret the blades prove themselves to each other with
//! (the peer token) is not in the configuration at all: it comes from a credentials file
//! fetched at boot (`bladevisor.credentials=<url>`, else `[cluster] credentials-url`), which the
//! deployment server hands only to blades, and is never baked into the image.
//!
//! The first release's `[cluster] token` is still read, as the peer token and as an operator
//! token named `cluster-token`, with a warning that reading the configuration gives it away.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{find_key_line, ConfigError};
use super::values::token_problem;

/// `[operators.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Operator {
    /// Lower-case hex SHA-256 of the operator's token (`bladevisor token new <name>` makes both).
    pub token_sha256: String,
}

/// The credentials file a blade fetches at boot.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Credentials {
    /// What blades send each other (`Authorization: Bearer ...`) and accept from each other.
    pub peer_token: String,
    /// The cluster CA's certificate (PEM): what every blade and operator verifies against.
    pub ca: String,
    /// This blade's certificate (PEM), naming it, signed by the CA.
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

impl Credentials {
    /// The TLS configurations of blade `node`, checked (`source` names the file in errors).
    pub fn tls(&self, source: &str, node: &str) -> Result<crate::tls::ClusterTls, String> {
        let pem = crate::tls::Pem { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() };
        crate::tls::ClusterTls::new(source, node, pem)
    }
}

impl Credentials {
    /// The file as a deployment server serves it (what `bladevisor credentials issue` writes).
    pub fn render(&self) -> String {
        format!(
            "# bladevisor credentials: secret. Served to this blade only (README: Credentials and TLS).\n\
             peer-token = \"{}\"\nca = '''\n{}'''\ncert = '''\n{}'''\nkey = '''\n{}'''\n",
            self.peer_token,
            with_newline(&self.ca),
            with_newline(&self.cert),
            with_newline(&self.key)
        )
    }
}

fn with_newline(pem: &str) -> String {
    format!("{}\n", pem.trim_end())
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { peer-token, ca, cert, key: <secret> }")
    }
}

/// The most a credentials file may be.
pub const MAX_CREDENTIALS_BYTES: usize = 64 << 10;

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.operators.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "Keys {{ operators: {names:?}, peer: {} }}", if self.peer.is_some() { "set" } else { "none" })
    }
}

/// What a blade checks callers against: operators' token hashes, and the peer token.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Keys {
    pub operators: Vec<(String, [u8; 32])>,
    pub peer: Option<String>,
}

/// Who a caller proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator(String),
    Peer,
}

impl Keys {
    /// Who presents `token`, if anyone.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        if self.peer.as_deref().is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            return Some(Caller::Peer);
        }
        let h = sha256(token);
        self.operators.iter().find(|(_, k)| constant_time_eq(k, &h)).map(|(n, _)| Caller::Operator(n.clone()))
    }

    /// Whether anyone at all may change this blade.
    pub fn any(&self) -> bool {
        self.peer.is_some() || !self.operators.is_empty()
    }
}

/// Compares without leaking, through timing, how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of any bytes (a token, a release's kernel) in lower-case hex.
pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    Sha256::digest(data.as_ref()).iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Checks every `[operators.<name>]` and returns their keys.
pub fn operator_keys(
    file: &Path,
    text: &str,
    ops: &std::collections::BTreeMap<String, Operator>,
) -> Result<Vec<(String, [u8; 32])>, ConfigError> {
    ops.iter()
        .map(|(name, o)| {
            let at = |msg: String| match find_key_line(text, &format!("operators.{name}"), "token-sha256") {
                Some(l) => ConfigError::at_line(file, l, msg),
                None => ConfigError::new(file, msg),
            };
            if !super::services::is_safe_name(name) {
                return Err(at(format!("operator {name:?}: names are letters, digits, '-' and '_'")));
            }
            let key = unhex(&o.token_sha256).ok_or_else(|| {
                at(format!(
                    "operator {name}: token-sha256 must be 64 lower-case hex digits (the SHA-256 of the token, \
                     as `bladevisor token new {name}` prints it), not the token"
                ))
            })?;
            Ok((name.clone(), key))
        })
        .collect()
}

/// Parses a credentials file, naming it in errors; the token itself is never in a message.
pub fn parse_credentials(source: &str, text: &str) -> Result<Credentials, String> {
    // The message and the line, never the quoted source (it may hold the secrets).
    let c: Credentials = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
        format!("{source}: not a credentials file ({}{at})", e.message().trim())
    })?;
    if let Some(why) = token_problem(&c.peer_token) {
        return Err(format!("{source}: peer-token: {why}"));
    }
    Ok(c)
}

/// A fresh token: 32 random bytes from the kernel, as 32 URL-safe characters (192 bits).
pub fn new_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    std::io::Read::read_exact(&mut f, &mut b).map_err(|e| format!("/dev/urandom: {e}"))?;
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    Ok(b.iter().map(|x| A[(*x & 63) as usize] as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_is_known_by_the_hash_of_their_token_and_peers_by_theirs() {
        let keys = Keys {
            operators: vec![
                ("alice".into(), sha256("alice-token-0123456789")),
                ("bob".into(), sha256("bob-token-0123456789")),
            ],
            peer: Some("peer-secret-0123456789".into()),
        };
        assert_eq!(keys.caller("alice-token-0123456789"), Some(Caller::Operator("alice".into())));
        assert_eq!(keys.caller("bob-token-0123456789"), Some(Caller::Operator("bob".into())));
        assert_eq!(keys.caller("peer-secret-0123456789"), Some(Caller::Peer));
        assert_eq!(keys.caller(&sha256_hex("alice-token-0123456789")), None, "the hash is not the token");
        assert_eq!(keys.caller(""), None);
        assert!(!format!("{keys:?}").contains("peer-secret"), "never printed");
    }

    #[test]
    fn operator_sections_are_checked_with_their_line() {
        let text = "[operators.alice]\ntoken-sha256 = \"not-a-hash\"\n";
        let ops: std::collections::BTreeMap<String, Operator> =
            [("alice".to_string(), Operator { token_sha256: "not-a-hash".into() })].into();
        let e = operator_keys(Path::new("cluster.toml"), text, &ops).unwrap_err().to_string();
        assert!(e.starts_with("cluster.toml:2: operator alice: token-sha256 must be 64"), "{e}");
        let good = sha256_hex("alice-token-0123456789");
        let ops = [("alice".to_string(), Operator { token_sha256: good })].into();
        assert_eq!(operator_keys(Path::new("c"), "", &ops).unwrap()[0].1, sha256("alice-token-0123456789"));
    }

    fn sample(token: &str) -> Credentials {
        let ca = crate::tls::pki::new_ca("lab").unwrap();
        let b = crate::tls::pki::issue(&ca.cert, &ca.key, "blade1", &[], 30).unwrap();
        Credentials { peer_token: token.into(), ca: ca.cert, cert: b.cert, key: b.key }
    }

    #[test]
    fn a_credentials_file_is_checked_without_printing_its_secret() {
        let good = sample("peer-secret-0123456789");
        let c = parse_credentials("http://deploy/creds", &good.render()).unwrap();
        assert_eq!(c.peer_token, good.peer_token);
        assert_eq!((c.ca.trim(), c.cert.trim(), c.key.trim()), (good.ca.trim(), good.cert.trim(), good.key.trim()));
        assert!(c.tls("http://deploy/creds", "blade1").is_ok());
        let e = c.tls("http://deploy/creds", "blade2").unwrap_err();
        assert!(e.contains("does not name this blade (blade2)"), "{e}");
        assert!(!format!("{c:?}").contains("peer-secret") && !format!("{c:?}").contains("PRIVATE"));
        let e = parse_credentials("http://deploy/creds", &sample("short").render()).unwrap_err();
        assert!(e.starts_with("http://deploy/creds: peer-token: the token must be at least 16"), "{e}");
        let e = parse_credentials("http://deploy/creds", "peer-token = \"s3cret-s3cret-s3cret\"\n").unwrap_err();
        assert!(e.starts_with("http://deploy/creds: not a credentials file (missing field `ca`"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn new_tokens_are_long_random_and_valid() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(token_problem(&a).is_none() && a.len() == 32, "{a}");
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
