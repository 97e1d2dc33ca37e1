//! Serving the route table: credentials, a request handed to the dispatch, its reply rendered
//! as JSON with the status code its refusal calls for, or the status as Prometheus text.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use super::server::{ApiRequest, ApiResponse, Handler, Throttle};
use super::{Auth, Dispatch};
use crate::config::credentials::Caller;
use crate::config::error::shorten;
use crate::proto::request::{Answer, Operator, Peer, Read, Refusal, Reply, Request, Why};
use crate::proto::routes::{route, RouteError};

/// The HTTP status code of a refusal: decided here, and nowhere else.
pub fn code(why: Why) -> u16 {
    match why {
        Why::Invalid => 400,
        Why::Forbidden => 403,
        Why::NotFound => 404,
        Why::Conflict => 409,
        Why::Failed => 422,
        Why::Unavailable => 503,
    }
}

fn message(code: u16, key: &str, msg: &str) -> ApiResponse {
    ApiResponse::json(code, serde_json::json!({ key: msg }).to_string())
}

fn render(reply: Reply) -> ApiResponse {
    match reply {
        Ok(a) => ApiResponse::json(200, a.to_json()),
        Err(r) => message(code(r.why), "error", &r.message),
    }
}

/// Reads 4 KiB at `offset` (rounded down to 4 KiB) of `/dev/mapper/<alias>` with O_DIRECT, so
/// the answer comes from the LUN through its paths, not from the page cache.
pub fn read_lun(alias: &str, offset: u64) -> Result<Vec<u8>, Refusal> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    if !crate::config::aliases::valid_alias(alias) {
        return Err(Refusal::not_found(format!("{alias:?} is not an alias")));
    }
    let dev = std::path::Path::new("/dev/mapper").join(alias);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(&dev)
        .map_err(|e| Refusal::not_found(format!("{}: {e}", dev.display())))?;
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("valid layout");
    // O_DIRECT needs an aligned buffer: allocate one and copy out.
    // SAFETY: the layout has a non-zero size; the buffer is freed below on every path.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(Refusal::failed("out of memory"));
    }
    // SAFETY: ptr points to 4096 initialised (zeroed) bytes owned here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, 4096) };
    let r = f.seek(SeekFrom::Start(offset & !4095)).and_then(|_| f.read(buf)).map(|n| buf[..n].to_vec());
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    r.map_err(|e| Refusal::failed(format!("reading {} at {offset}: {e}", dev.display())))
}

/// LUN reads (blocking O_DIRECT reads that a failed path can hold for a long time) running at
/// once; more are answered 503 rather than taking every handler thread.
const MAX_LUN_READS: usize = 4;

/// Log entries in one answer (a follower asks again from where it ended).
const LOG_PAGE: usize = 1000;

/// The API's request handler: routes, checks credentials and asks the main loop.
pub struct Api {
    dispatch: Dispatch,
    auth: Auth,
    name: String,
    refusals: Mutex<Throttle>,
    lun_reads: AtomicUsize,
}

impl Api {
    pub fn new(dispatch: Dispatch, auth: Auth, name: &str) -> Self {
        Api {
            dispatch,
            auth,
            name: name.to_string(),
            refusals: Mutex::new(Throttle::new(std::time::Duration::from_secs(10))),
            lun_reads: AtomicUsize::new(0),
        }
    }

    fn ask(&self, r: Request) -> Reply {
        (self.dispatch)(r)
    }

    /// Logs a refused call, at most one line per ten seconds, with what the client sent cut short.
    fn log_refusal(&self, req: &ApiRequest, why: &str) {
        let allowed = self.refusals.lock().unwrap_or_else(|p| p.into_inner()).allow();
        if let Some(held_back) = allowed {
            warn!(
                api = %self.name,
                remote = ?req.remote,
                request = %format!("{} {}", shorten(&req.method, 16), shorten(&req.target, 120)),
                refused_since_last_line = held_back,
                "refused: {why}"
            );
        }
    }

    fn read_lun(&self, alias: &str, offset: u64) -> ApiResponse {
        /// Gives the read's place back however the read ends.
        struct Slot<'a>(&'a AtomicUsize);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _slot = Slot(&self.lun_reads);
        if self.lun_reads.fetch_add(1, Ordering::SeqCst) >= MAX_LUN_READS {
            return message(503, "error", "too many LUN reads in progress; try again shortly");
        }
        match read_lun(alias, offset) {
            Ok(bytes) => ApiResponse::json(
                200,
                serde_json::json!({ "alias": alias, "offset": offset & !4095, "length": bytes.len(), "hex": hex(&bytes) })
                    .to_string(),
            ),
            Err(r) => render(Err(r)),
        }
    }
}

impl Handler for Api {
    fn body_limit(&self, method: &str, target: &str) -> usize {
        route(method, target).map(|r| r.body_limit()).unwrap_or(0)
    }

    fn handle(&self, req: ApiRequest) -> ApiResponse {
        let what = || format!("{} {}", shorten(&req.method, 16), shorten(&req.target, 120));
        let request = match route(&req.method, &req.target) {
            Ok(r) => r,
            Err(RouteError::Invalid(m)) => return message(400, "error", &m),
            Err(RouteError::NotFound) => return message(404, "error", &format!("no such endpoint: {}", what())),
            Err(RouteError::MethodNotAllowed) => {
                return message(405, "error", &format!("method not allowed: {}", what()))
            }
        };
        let caller = match check(&self.auth, &request, req.authorization.as_deref(), req.tls.as_ref()) {
            Err((code, why)) => {
                self.log_refusal(&req, &why);
                return message(code, "error", &why);
            }
            Ok(c) => c,
        };
        if let Some(Caller::Operator(name)) = &caller {
            info!(operator = %name, "{}", what());
        }
        match request {
            Request::Read(Read::Metrics) => match self.ask(Request::Read(Read::Status)) {
                Ok(Answer::Status(s)) => ApiResponse {
                    code: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: super::metrics::metrics(&s, crate::logging::unix_secs()),
                },
                Ok(_) => message(500, "error", "the status came back as something else"),
                Err(r) => render(Err(r)),
            },
            Request::Operator(Operator::ReadLun { alias, offset }) => self.read_lun(&alias, offset),
            Request::Operator(Operator::ConsoleInput { name, session, .. }) => {
                match crate::proto::routes::console_bytes(&req.body) {
                    Ok(data) => {
                        let who = match caller {
                            Some(Caller::Operator(n)) => format!("operator {n}"),
                            Some(Caller::Peer) => "another blade".into(),
                            None => "root on the blade".into(),
                        };
                        render(self.ask(Request::Operator(Operator::ConsoleInput { name, session, who, data })))
                    }
                    Err(e) => message(400, "error", &e),
                }
            }
            Request::Operator(Operator::Logs { since, service, guest }) => {
                let (entries, next) = crate::logging::ring::RING.lock().unwrap_or_else(|p| p.into_inner()).since(
                    since,
                    LOG_PAGE,
                    service.as_deref(),
                    guest.as_deref(),
                );
                let remote_dropped = crate::logging::remote::DROPPED.load(Ordering::Relaxed);
                let page = crate::proto::request::LogsPage { entries, next, remote_dropped };
                ApiResponse::json(200, serde_json::to_string(&page).unwrap_or_default())
            }
            Request::Operator(Operator::GuestQmp { guest, .. }) => {
                match serde_json::from_slice::<serde_json::Value>(&req.body) {
                    Ok(command) if command["execute"].is_string() => {
                        render(self.ask(Request::Operator(Operator::GuestQmp { guest, command })))
                    }
                    _ => message(
                        400,
                        "error",
                        &format!(
                            "the body must be a QMP command {{\"execute\": ...}}, not {:?}",
                            shorten(&String::from_utf8_lossy(&req.body), 80)
                        ),
                    ),
                }
            }
            r @ Request::Peer(Peer::Incoming { .. }) => {
                // The first arrivals after a boot wait for the blade to know what its QEMU
                // provides (asked once the boot is done, seconds at most) rather than be taken
                // unchecked; the source's call waits 40 s.
                if !crate::qemu::offer::wait_asked(Duration::from_secs(20)) {
                    warn!("an arrival is checked before QEMU has said what it provides (still asking it)");
                }
                render(self.ask(r))
            }
            r => render(self.ask(r)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Who makes `request`, or why it is refused: the HTTP code and the reason.
/// - The control socket: root, by its file mode.
/// - A read-only listener (plain HTTP, or a blade without credentials): the status and the
///   metrics only, which hold no secret.
/// - The TLS listener: reads for anyone; operators' calls with an operator's token (or a
///   blade's: the peer token and its certificate); calls between blades only from a blade
///   (the peer token and a certificate of the cluster CA, naming the blade the call says it
///   comes from).
pub fn check(
    auth: &Auth,
    request: &Request,
    authorization: Option<&str>,
    tls: Option<&super::server::TlsInfo>,
) -> Result<Option<Caller>, (u16, String)> {
    let keys = match auth {
        Auth::Local => return Ok(None),
        Auth::ReadOnly(_) if matches!(request, Request::Read(Read::Status | Read::Metrics)) => return Ok(None),
        Auth::ReadOnly(why) => return Err((403, why.clone())),
        Auth::Keys(keys) => keys,
    };
    if !request.needs_token() {
        return Ok(None);
    }
    let caller = authorization.and_then(|a| a.strip_prefix("Bearer ")).and_then(|t| keys.caller(t));
    let cert = tls.and_then(|t| t.client_cert.as_ref());
    match (caller, request) {
        (None, _) => Err((401, "this call needs an operator's token (Authorization: Bearer ...)".into())),
        (Some(Caller::Operator(_)), Request::Peer(_)) => {
            Err((403, "only another blade of the cluster may make this call".into()))
        }
        (Some(Caller::Peer), _) if cert.is_none() => {
            Err((403, "a blade's call needs the blade's certificate (TLS client authentication)".into()))
        }
        (Some(Caller::Peer), Request::Peer(p)) => match (p.from_node(), cert) {
            (Some(node), Some(c)) if !crate::tls::names(c, node) => {
                Err((403, format!("this call comes from {node}, and the certificate presented is not {node}'s")))
            }
            _ => Ok(Some(Caller::Peer)),
        },
        (Some(c), _) => Ok(Some(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_status_code() {
        let codes: Vec<u16> =
            [Why::Invalid, Why::Forbidden, Why::NotFound, Why::Conflict, Why::Failed, Why::Unavailable]
                .into_iter()
                .map(code)
                .collect();
        assert_eq!(codes, [400, 403, 404, 409, 422, 503]);
        let r = render(Err(Refusal::conflict("guest web is migrating")));
        assert_eq!((r.code, r.body.as_str()), (409, r#"{"error":"guest web is migrating"}"#));
        let r = render(Ok(Answer::done("noted")));
        assert_eq!((r.code, r.body.as_str()), (200, r#"{"ok":"noted"}"#));
    }

    #[test]
    fn who_may_call_what_on_each_listener() {
        use crate::api::server::TlsInfo;
        use crate::config::credentials::{sha256, Keys};
        use crate::proto::request::Peer;
        let t = Auth::Keys(Keys {
            operators: vec![("alice".into(), sha256("alice-s3cret-0123"))],
            peer: Some("peer-s3cret-0123".into()),
        });
        let ca = crate::tls::pki::new_ca("lab").unwrap();
        let blade2 = crate::tls::pki::issue(&ca.cert, &ca.key, "blade2", &[], 30).unwrap();
        let cert = crate::tls::certs_from_pem("x", &blade2.cert).unwrap().remove(0);
        let blade = TlsInfo { client_cert: Some(cert) };
        let operator = TlsInfo { client_cert: None };
        let op = Request::Operator(Operator::Undrain);
        let peer = |from: &str| {
            Request::Peer(Peer::Incoming { guest: "web".into(), from: from.into(), caps: vec![], release: None })
        };
        let status = Request::Read(Read::Status);
        let alice = Some(Caller::Operator("alice".into()));
        assert_eq!(check(&t, &op, Some("Bearer alice-s3cret-0123"), Some(&operator)), Ok(alice));
        assert_eq!(check(&t, &op, Some("Bearer peer-s3cret-0123"), Some(&blade)), Ok(Some(Caller::Peer)));
        assert_eq!(check(&t, &peer("blade2"), Some("Bearer peer-s3cret-0123"), Some(&blade)), Ok(Some(Caller::Peer)));
        let refused = |r: &Request, auth: Option<&str>, tls: &TlsInfo| check(&t, r, auth, Some(tls)).unwrap_err();
        let (code, why) = refused(&peer("blade3"), Some("Bearer peer-s3cret-0123"), &blade);
        assert_eq!(
            (code, why.as_str()),
            (403, "this call comes from blade3, and the certificate presented is not blade3's")
        );
        let (code, why) = refused(&peer("blade2"), Some("Bearer peer-s3cret-0123"), &operator);
        assert!(code == 403 && why.contains("needs the blade's certificate"), "the peer token alone is not enough");
        assert_eq!(
            refused(&peer("blade2"), Some("Bearer alice-s3cret-0123"), &blade).0,
            403,
            "operators are not blades"
        );
        assert_eq!(refused(&op, Some("Bearer alice-s3cret-012"), &operator).0, 401);
        assert_eq!(refused(&op, Some("alice-s3cret-0123"), &operator).0, 401);
        assert_eq!(refused(&op, None, &operator).0, 401);
        assert_eq!(check(&t, &status, None, Some(&operator)), Ok(None), "reads need nothing");
        // The plain port: the status and the metrics, nothing else, whatever the token.
        let plain = Auth::ReadOnly("port 7480 serves only ...: TLS on 7443".into());
        assert_eq!(check(&plain, &status, None, None), Ok(None));
        assert_eq!(check(&plain, &Request::Read(Read::Metrics), None, None), Ok(None));
        let (code, why) = check(&plain, &op, Some("Bearer alice-s3cret-0123"), None).unwrap_err();
        assert_eq!((code, why.as_str()), (403, "port 7480 serves only ...: TLS on 7443"));
        assert_eq!(check(&plain, &Request::Read(Read::Capacity), None, None).unwrap_err().0, 403);
        assert_eq!(check(&Auth::Local, &peer("x"), None, None), Ok(None));
    }
}
