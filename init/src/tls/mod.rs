//! TLS between the parts of a cluster, with rustls: one cluster CA, one certificate per blade
//! naming the blade (`DNS:<node>`, plus its addresses when the operator's CLI reaches it by
//! address), valid for both ends of a connection.
//!
//! - A blade serves its API's calls that change anything on 7443 only, with its certificate.
//!   A client may present a certificate: verified against the cluster CA, it proves the caller
//!   is a blade (the peer calls need it, and the one it names must be the blade the call says
//!   it comes from); operators present none and prove themselves with their token.
//! - A blade calling another verifies the certificate names the blade it meant to call, and
//!   presents its own.
//! - The operator's CLI verifies the blade's certificate against the cluster CA it is given.
//! - QEMU's migration streams use the same files (see [`qemu_files`]).
//!
//! Only TLS 1.3, with the ring provider: no negotiation down to anything weaker.

pub mod pki;

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Every certificate of a PEM text, or why not, naming `what`.
pub fn certs_from_pem(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate (-----BEGIN CERTIFICATE-----) in it"));
    }
    Ok(certs)
}

/// The private key of a PEM text (PKCS#8, SEC1 or PKCS#1), or why not, naming `what` (never
/// the key).
pub fn key_from_pem(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    match rustls_pemfile::private_key(&mut pem.as_bytes()) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(format!("{what}: no private key (-----BEGIN PRIVATE KEY-----) in it")),
        Err(e) => Err(format!("{what}: not a PEM private key ({e})")),
    }
}

fn roots(what: &str, ca_pem: &str) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(what, ca_pem)? {
        roots.add(c).map_err(|e| format!("{what}: not a usable CA certificate ({e})"))?;
    }
    Ok(Arc::new(roots))
}

/// Whether `cert` names `name` (a DNS name or an address among its subject alternative names).
/// Says nothing of who signed it: only for a certificate the handshake has verified.
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else { return false };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// The PEM texts of a blade's credentials, as fetched (QEMU reads them from files).
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pem { ca, cert, key: <secret> }")
    }
}

/// When a certificate stops being valid (Unix seconds), if it parses.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert).ok().map(|(_, c)| c.validity().not_after.timestamp())
}

/// Warn this long before a blade's certificate expires.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// What an operator must hear about a certificate valid until `not_after`, at `now` (both Unix
/// seconds): nothing, a warning (`false`) within [`EXPIRY_WARNING_DAYS`], or a fault (`true`)
/// once it has expired.
pub fn expiry(node: &str, not_after: i64, now: i64) -> Option<(bool, String)> {
    let days = (not_after - now).div_euclid(86400);
    let fix = format!("bladevisor credentials issue <dir> {node}, then reboot this blade");
    if not_after <= now {
        Some((true, format!("TLS: this blade's certificate expired {} days ago: peers refuse it ({fix})", -days)))
    } else if days < EXPIRY_WARNING_DAYS {
        Some((false, format!("TLS: this blade's certificate expires in {days} days ({fix})")))
    } else {
        None
    }
}

/// A blade's TLS: its server and client configurations, for the node it is.
pub struct ClusterTls {
    pub node: String,
    /// When its certificate expires (Unix seconds).
    pub not_after: Option<i64>,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub pem: Pem,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterTls {{ node: {} }}", self.node)
    }
}

impl PartialEq for ClusterTls {
    fn eq(&self, o: &Self) -> bool {
        self.node == o.node && self.pem == o.pem
    }
}

impl ClusterTls {
    /// Checks the credentials (the certificate is signed by the CA, names `node`, matches the
    /// key) and builds both configurations. `source` names where they came from in errors.
    pub fn new(source: &str, node: &str, pem: Pem) -> Result<ClusterTls, String> {
        let ca = certs_from_pem(&format!("{source}: ca"), &pem.ca)?;
        let roots = roots(&format!("{source}: ca"), &pem.ca)?;
        let chain = certs_from_pem(&format!("{source}: cert"), &pem.cert)?;
        let key = key_from_pem(&format!("{source}: key"), &pem.key)?;
        if !names(&chain[0], node) {
            return Err(format!("{source}: cert does not name this blade ({node}): it was issued for another one"));
        }
        verify_leaf(&ca, &chain).map_err(|e| format!("{source}: cert: {e}"))?;
        let chain_leaf = chain[0].clone();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{source}: ca: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{source}: cert and key: {e}"))?;
        let client = client_presenting(source, roots, chain, key)?;
        let not_after = not_after(&chain_leaf);
        Ok(ClusterTls { node: node.to_string(), not_after, server: Arc::new(server), client, pem })
    }
}

/// Verifies a blade's own certificate against the cluster CA now, so that a wrong one is
/// reported at boot, naming the file, rather than as every peer's failed handshake.
fn verify_leaf(ca: &[CertificateDer<'static>], chain: &[CertificateDer<'static>]) -> Result<(), String> {
    let anchors: Vec<_> = ca.iter().filter_map(|c| webpki::anchor_from_trusted_cert(c).ok()).collect();
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| format!("not a certificate ({e})"))?;
    let algs = provider().signature_verification_algorithms.all;
    let now = rustls::pki_types::UnixTime::now();
    let usage = webpki::KeyUsage::server_auth();
    match leaf.verify_for_usage(algs, &anchors, &chain[1..], now, usage, None, None) {
        Ok(_) => Ok(()),
        Err(webpki::Error::UnknownIssuer) => Err("not signed by the cluster CA given with it".into()),
        Err(webpki::Error::CertExpired { .. }) => Err("expired (or this blade's clock is wrong)".into()),
        Err(webpki::Error::CertNotValidYet { .. }) => Err("not valid yet (or this blade's clock is wrong)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A client that verifies servers with `roots` and presents `chain` (what a blade is to another).
fn client_presenting(
    source: &str,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{source}: cert and key: {e}"))?;
    Ok(Arc::new(config))
}

/// The same from PEM texts, without checking who signed the certificate presented: for tests
/// that play a blade with a certificate of another CA (a blade's own goes through
/// [`ClusterTls::new`], which checks).
pub fn client_presenting_pem(
    what: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, String> {
    let roots = roots(&format!("{what}: ca"), ca_pem)?;
    let chain = certs_from_pem(&format!("{what}: cert"), cert_pem)?;
    client_presenting(what, roots, chain, key_from_pem(&format!("{what}: key"), key_pem)?)
}

/// The operator's client: verifies blades against the cluster CA, presents no certificate.
pub fn operator_client(what: &str, ca_pem: &str) -> Result<Arc<ClientConfig>, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(what, ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What `https://` fetches (configuration, alias file, credentials) verify servers with: set
/// once at boot from the fetch CA, before the first fetch. Process-wide, as the fetches are.
static FETCH_TRUST: std::sync::RwLock<Option<Arc<ClientConfig>>> = std::sync::RwLock::new(None);

/// Trusts the CAs of `ca_pem` for `https://` fetches from now on.
pub fn set_fetch_trust(what: &str, ca_pem: &str) -> Result<(), String> {
    let config = operator_client(what, ca_pem)?;
    *FETCH_TRUST.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
    Ok(())
}

/// The fetch trust, when a fetch CA was given.
pub fn fetch_trust() -> Option<Arc<ClientConfig>> {
    FETCH_TRUST.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A certificate given on the kernel command line (base64 of its DER, no spaces) as PEM.
pub fn pem_of_base64(b64: &str) -> String {
    let body: Vec<String> = b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", body.join("\n"))
}

/// Diffie-Hellman parameters for QEMU's TLS server end: the ffdhe2048 group of RFC 7919 (a
/// published standard, not a secret). Without a `dh-params.pem` QEMU generates 2048-bit
/// parameters when a destination loads its credentials, which takes seconds on a fast machine
/// and longer than a migration's patience on a busy or emulated one.
pub const FFDHE2048_PEM: &str = "-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

/// The files QEMU's `tls-creds-x509` object reads from its `dir`: the CA, and this blade's
/// certificate and key as both the server (destination) and the client (source) of a stream,
/// and the server's Diffie-Hellman parameters.
pub fn qemu_files(pem: &Pem) -> [(&'static str, &str); 6] {
    [
        ("dh-params.pem", FFDHE2048_PEM),
        ("ca-cert.pem", &pem.ca),
        ("server-cert.pem", &pem.cert),
        ("server-key.pem", &pem.key),
        ("client-cert.pem", &pem.cert),
        ("client-key.pem", &pem.key),
    ]
}

#[cfg(test)]
mod tests;
