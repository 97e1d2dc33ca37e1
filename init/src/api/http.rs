//! Routing HTTP requests to the main loop, and rendering its replies as JSON or Prometheus text.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use tracing::warn;

use super::server::{ApiRequest, ApiResponse, Handler, Throttle};
use super::{ask, Auth, Reply, Request, ServiceAction, Status};
use crate::config::error::shorten;
use crate::pid1::Event;
use crate::proto::GuestState;
use crate::proto::PowerAction;
use crate::supervisor::ServiceState;

/// A parsed route: what to ask the main loop, whether it mutates, and how to render it.
#[derive(Debug, PartialEq)]
pub enum Route {
    Status,
    Metrics,
    /// A call that changes something: needs the token over the network.
    Do(Request),
    /// Reads 4 KiB of a LUN through its map (bypassing the page cache): needs the token, as it
    /// reads guests' data.
    ReadLun {
        alias: String,
        offset: u64,
    },
    /// A read of something private (a guest's console): needs the token too.
    Private(Request),
    /// One raw QMP command (the request's body) to a guest: needs the token.
    Qmp {
        guest: String,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest(String),
}

fn query(url: &str, key: &str) -> Option<String> {
    url.split_once('?')?.1.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(String::from))
}

pub fn route(method: &str, url: &str) -> Route {
    let path = url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["v1", "status"]) => Route::Status,
        ("GET", ["metrics"]) => Route::Metrics,
        ("POST", ["v1", "power", action]) => match PowerAction::parse(action) {
            Some(a) => Route::Do(Request::Power(a)),
            None => Route::NotFound,
        },
        ("POST", ["v1", "services", name, action]) => match ServiceAction::parse(action) {
            Some(a) => Route::Do(Request::Service { name: name.to_string(), action: a }),
            None => Route::NotFound,
        },
        ("POST", ["v1", "guests", name, "migrate"]) => {
            let bandwidth_mbps = match query(url, "max-bandwidth-mbps").map(|b| b.parse::<f64>()) {
                None => None,
                Some(Ok(b)) if crate::migration::valid_bandwidth(b) => Some(b),
                Some(_) => return Route::BadRequest(crate::migration::BANDWIDTH_RANGE.into()),
            };
            match query(url, "to") {
                Some(to) => Route::Do(Request::Migrate { guest: name.to_string(), to, bandwidth_mbps }),
                None => Route::BadRequest("migrate needs ?to=<node>".into()),
            }
        }
        ("POST", ["v1", "guests", name, "qmp"]) => Route::Qmp { guest: name.to_string() },
        ("POST", ["v1", "guests", name, "resolve"]) => Route::Do(Request::Resolve(name.to_string())),
        ("POST", ["v1", "guests", name, "migrate-cancel"]) => Route::Do(Request::MigrateCancel(name.to_string())),
        ("POST", ["v1", "guests", name, action]) => match ServiceAction::parse(action) {
            Some(a) => Route::Do(Request::Guest {
                name: name.to_string(),
                action: a,
                force: query(url, "force").is_some_and(|f| f == "1" || f == "true"),
            }),
            None => Route::NotFound,
        },
        ("POST", ["v1", "incoming", guest]) => match query(url, "from") {
            Some(from) => Route::Do(Request::Incoming {
                guest: guest.to_string(),
                from,
                caps: query(url, "caps")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
            }),
            None => Route::BadRequest("incoming needs ?from=<node>".into()),
        },
        ("POST", ["v1", "incoming", guest, "resume"]) => Route::Do(Request::IncomingResume(guest.to_string())),
        ("POST", ["v1", "incoming", guest, "abort"]) => Route::Do(Request::IncomingAbort(guest.to_string())),
        ("POST", ["v1", "evacuate"]) => match query(url, "parallel").map(|p| p.parse::<usize>()) {
            None => Route::Do(Request::Evacuate { parallel: None }),
            Some(Ok(p)) if (1..=crate::migration::MAX_PARALLEL).contains(&p) => {
                Route::Do(Request::Evacuate { parallel: Some(p) })
            }
            Some(_) => Route::BadRequest(format!("parallel must be 1-{}", crate::migration::MAX_PARALLEL)),
        },
        ("POST", ["v1", "undrain"]) => Route::Do(Request::Undrain),
        ("POST", ["v1", "nodes", node, verb @ ("drained" | "undrained")]) => {
            Route::Do(Request::PeerDrained { node: node.to_string(), drained: *verb == "drained" })
        }
        ("GET", ["v1", "guests", name, "console"]) => {
            match query(url, "offset").unwrap_or_else(|| "0".into()).parse() {
                Ok(offset) => Route::Private(Request::Console { name: name.to_string(), offset }),
                Err(_) => Route::NotFound,
            }
        }
        ("POST", ["v1", "storage", "reload"]) => Route::Do(Request::StorageReload),
        ("GET", ["v1", "luns", alias, "read"]) => match query(url, "offset").unwrap_or_else(|| "0".into()).parse() {
            Ok(offset) => Route::ReadLun { alias: alias.to_string(), offset },
            Err(_) => Route::NotFound,
        },
        (_, ["v1", "status"])
        | (_, ["metrics"])
        | (_, ["v1", "power", _])
        | (_, ["v1", "services", _, _])
        | (_, ["v1", "storage", "reload"])
        | (_, ["v1", "luns", _, "read"])
        | (_, ["v1", "guests", _, _])
        | (_, ["v1", "incoming", ..])
        | (_, ["v1", "evacuate"])
        | (_, ["v1", "undrain"])
        | (_, ["v1", "nodes", _, _]) => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

fn message(code: u16, key: &str, msg: &str) -> ApiResponse {
    ApiResponse::json(code, serde_json::json!({ key: msg }).to_string())
}

fn render(reply: Reply) -> ApiResponse {
    match reply {
        Reply::Status(s) => ApiResponse::json(200, serde_json::to_string(&s).unwrap_or_default()),
        Reply::Ok(m) => message(200, "ok", &m),
        Reply::Error(c, m) => message(c, "error", &m),
        Reply::Json(v) => ApiResponse::json(200, v.to_string()),
        Reply::ServiceState(s) => ApiResponse::json(200, serde_json::json!({ "state": s }).to_string()),
        Reply::Deferred => message(500, "error", "no answer"),
    }
}

/// Reads 4 KiB at `offset` (rounded down to 4 KiB) of `/dev/mapper/<alias>` with O_DIRECT, so
/// the answer comes from the LUN through its paths, not from the page cache.
pub fn read_lun(alias: &str, offset: u64) -> Result<Vec<u8>, (u16, String)> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    if !crate::config::aliases::valid_alias(alias) {
        return Err((404, format!("{alias:?} is not an alias")));
    }
    let dev = std::path::Path::new("/dev/mapper").join(alias);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(&dev)
        .map_err(|e| (404, format!("{}: {e}", dev.display())))?;
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("valid layout");
    // O_DIRECT needs an aligned buffer: allocate one and copy out.
    // SAFETY: the layout has a non-zero size; the buffer is freed below on every path.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err((500, "out of memory".into()));
    }
    // SAFETY: ptr points to 4096 initialised (zeroed) bytes owned here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, 4096) };
    let r = f.seek(SeekFrom::Start(offset & !4095)).and_then(|_| f.read(buf)).map(|n| buf[..n].to_vec());
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    r.map_err(|e| (500, format!("reading {} at {offset}: {e}", dev.display())))
}

/// The largest body a route takes: a QMP query's JSON; every other call carries its few
/// arguments in the URL.
pub const QMP_BODY_LIMIT: usize = 4096;
/// LUN reads (blocking O_DIRECT reads that a failed path can hold for a long time) running at
/// once; more are answered 503 rather than taking every handler thread.
const MAX_LUN_READS: usize = 4;

/// The API's request handler: routes, checks credentials and asks the main loop.
pub struct Api {
    tx: Sender<Event>,
    auth: Auth,
    name: String,
    refusals: Mutex<Throttle>,
    lun_reads: AtomicUsize,
}

impl Api {
    pub fn new(tx: Sender<Event>, auth: Auth, name: &str) -> Self {
        Api {
            tx,
            auth,
            name: name.to_string(),
            refusals: Mutex::new(Throttle::new(std::time::Duration::from_secs(10))),
            lun_reads: AtomicUsize::new(0),
        }
    }

    fn ask(&self, r: Request) -> Reply {
        ask(&self.tx, r)
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
            Err((code, e)) => message(code, "error", &e),
        }
    }
}

impl Handler for Api {
    fn body_limit(&self, method: &str, target: &str) -> usize {
        match route(method, target) {
            Route::Qmp { .. } => QMP_BODY_LIMIT,
            _ => 0,
        }
    }

    fn handle(&self, req: ApiRequest) -> ApiResponse {
        let route = route(&req.method, &req.target);
        if matches!(route, Route::Do(_) | Route::ReadLun { .. } | Route::Private(_) | Route::Qmp { .. }) {
            if let Some((code, why)) = refuse(&self.auth, req.authorization.as_deref()) {
                self.log_refusal(&req, why);
                return message(code, "error", why);
            }
        }
        let what = || format!("{} {}", shorten(&req.method, 16), shorten(&req.target, 120));
        match route {
            Route::BadRequest(m) => message(400, "error", &m),
            Route::NotFound => message(404, "error", &format!("no such endpoint: {}", what())),
            Route::MethodNotAllowed => message(405, "error", &format!("method not allowed: {}", what())),
            Route::Status => render(self.ask(Request::Status)),
            Route::Metrics => match self.ask(Request::Status) {
                Reply::Status(s) => {
                    ApiResponse { code: 200, content_type: "text/plain; version=0.0.4", body: metrics(&s) }
                }
                r => render(r),
            },
            Route::ReadLun { alias, offset } => self.read_lun(&alias, offset),
            Route::Do(r) | Route::Private(r) => render(self.ask(r)),
            Route::Qmp { guest } => match serde_json::from_slice::<serde_json::Value>(&req.body) {
                Ok(command) if command["execute"].is_string() => render(self.ask(Request::GuestQmp { guest, command })),
                _ => message(
                    400,
                    "error",
                    &format!(
                        "the body must be a QMP command {{\"execute\": ...}}, not {:?}",
                        shorten(&String::from_utf8_lossy(&req.body), 80)
                    ),
                ),
            },
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why a mutating call is refused, if it is: the HTTP code and the reason.
pub fn refuse(auth: &Auth, authorization: Option<&str>) -> Option<(u16, &'static str)> {
    match auth {
        Auth::Local => None,
        Auth::ReadOnly => Some((403, "no token is configured for this cluster: the API is read-only")),
        Auth::Token(t) => {
            let ok = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|given| constant_time_eq(given.as_bytes(), t.as_bytes()));
            (!ok).then_some((401, "this call needs the cluster's token (Authorization: Bearer ...)"))
        }
    }
}

/// Compares without leaking, through timing, how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus text exposition of a status snapshot.
pub fn metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let node = format!("node=\"{}\",version=\"{}\"", esc(&s.node), esc(&s.version));
    metric("bladevisor_info", "Image version and node name.", "gauge", vec![(format!("{{{node}}}"), 1.0)]);
    metric(
        "bladevisor_ready",
        "1 once boot is complete.",
        "gauge",
        vec![(String::new(), if s.ready { 1.0 } else { 0.0 })],
    );
    metric(
        "bladevisor_degraded_reasons",
        "Number of reasons the blade is degraded.",
        "gauge",
        vec![(String::new(), s.degraded.len() as f64)],
    );
    metric(
        "bladevisor_drained",
        "1 while the blade takes no guests (after an evacuation, until undrained).",
        "gauge",
        vec![(String::new(), if s.drained.is_some() { 1.0 } else { 0.0 })],
    );
    metric(
        "bladevisor_uptime_seconds",
        "Seconds since the kernel started.",
        "gauge",
        vec![(String::new(), s.uptime_s)],
    );
    metric(
        "bladevisor_orphans_reaped_total",
        "Orphaned processes reaped by PID 1.",
        "counter",
        vec![(String::new(), s.orphans_reaped as f64)],
    );
    metric(
        "bladevisor_service_up",
        "1 when the service is running and ready.",
        "gauge",
        s.services
            .iter()
            .map(|x| {
                (format!("{{service=\"{}\"}}", esc(&x.name)), if x.state == ServiceState::Running { 1.0 } else { 0.0 })
            })
            .collect(),
    );
    let lun = |l: &crate::storage::LunStatus| format!("{{alias=\"{}\",wwid=\"{}\"}}", esc(&l.alias), esc(&l.wwid));
    metric(
        "bladevisor_lun_paths_up",
        "Healthy paths of the LUN.",
        "gauge",
        s.luns.iter().map(|l| (lun(l), l.paths_up as f64)).collect(),
    );
    metric(
        "bladevisor_lun_paths_expected",
        "Paths the LUN should have.",
        "gauge",
        s.luns.iter().map(|l| (lun(l), l.paths_expected as f64)).collect(),
    );
    metric(
        "bladevisor_lun_state",
        "1 for the LUN's current state (healthy, degraded, missing).",
        "gauge",
        s.luns
            .iter()
            .flat_map(|l| {
                ["healthy", "degraded", "missing"].into_iter().map(move |st| {
                    (
                        format!("{{alias=\"{}\",state=\"{st}\"}}", esc(&l.alias)),
                        if l.state.as_str() == st { 1.0 } else { 0.0 },
                    )
                })
            })
            .collect(),
    );
    metric(
        "bladevisor_hba_online",
        "1 when the FC port is Online.",
        "gauge",
        s.hbas
            .iter()
            .map(|h| {
                (
                    format!("{{hba=\"{}\",wwpn=\"{}\"}}", esc(&h.host), esc(&h.wwpn)),
                    if h.port_state == "Online" { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    );
    let g = |x: &crate::proto::GuestStatus| format!("{{guest=\"{}\"}}", esc(&x.name));
    metric(
        "bladevisor_guest_running",
        "1 when the guest runs.",
        "gauge",
        s.guests.iter().map(|x| (g(x), if x.state == GuestState::Running { 1.0 } else { 0.0 })).collect(),
    );
    metric(
        "bladevisor_guest_state",
        "1 for the guest's current state on this blade (a state set: every state is listed).",
        "gauge",
        s.guests
            .iter()
            .flat_map(|x| {
                GuestState::ALL.into_iter().map(move |st| {
                    (format!("{{guest=\"{}\",state=\"{st}\"}}", esc(&x.name)), if x.state == st { 1.0 } else { 0.0 })
                })
            })
            .collect(),
    );
    metric(
        "bladevisor_guest_restarts_total",
        "Restarts of the guest since boot.",
        "counter",
        s.guests.iter().map(|x| (g(x), x.restarts as f64)).collect(),
    );
    metric(
        "bladevisor_guest_uptime_seconds",
        "Seconds the guest has been running.",
        "gauge",
        s.guests.iter().filter(|x| x.state == GuestState::Running).map(|x| (g(x), x.uptime_s)).collect(),
    );
    metric(
        "bladevisor_service_restarts_total",
        "Restarts of the service since boot.",
        "counter",
        s.services.iter().map(|x| (format!("{{service=\"{}\"}}", esc(&x.name)), x.restarts as f64)).collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_requests() {
        assert_eq!(route("GET", "/v1/status"), Route::Status);
        assert_eq!(route("GET", "/v1/status?x=1"), Route::Status);
        assert_eq!(route("GET", "/metrics"), Route::Metrics);
        assert_eq!(route("POST", "/v1/power/poweroff"), Route::Do(Request::Power(PowerAction::Poweroff)));
        assert_eq!(
            route("POST", "/v1/services/udevd/restart"),
            Route::Do(Request::Service { name: "udevd".into(), action: ServiceAction::Restart })
        );
        assert_eq!(route("POST", "/v1/power/explode"), Route::NotFound);
        assert_eq!(
            route("POST", "/v1/guests/web/migrate?to=blade2&max-bandwidth-mbps=0.5"),
            Route::Do(Request::Migrate { guest: "web".into(), to: "blade2".into(), bandwidth_mbps: Some(0.5) })
        );
        assert!(matches!(route("POST", "/v1/guests/web/migrate"), Route::BadRequest(_)));
        assert_eq!(
            route("POST", "/v1/guests/web/start?force=1"),
            Route::Do(Request::Guest { name: "web".into(), action: ServiceAction::Start, force: true })
        );
        assert_eq!(
            route("POST", "/v1/incoming/web?from=blade1&caps=events,x-ignore-shared"),
            Route::Do(Request::Incoming {
                guest: "web".into(),
                from: "blade1".into(),
                caps: vec!["events".into(), "x-ignore-shared".into()]
            })
        );
        assert_eq!(
            route("POST", "/v1/nodes/blade1/drained"),
            Route::Do(Request::PeerDrained { node: "blade1".into(), drained: true })
        );
        assert_eq!(route("POST", "/v1/evacuate?parallel=2"), Route::Do(Request::Evacuate { parallel: Some(2) }));
        assert_eq!(route("GET", "/v1/evacuate"), Route::MethodNotAllowed);
        assert_eq!(route("POST", "/v1/guests/web/resolve"), Route::Do(Request::Resolve("web".into())));
        assert_eq!(route("POST", "/v1/guests/web/qmp"), Route::Qmp { guest: "web".into() });
        assert_eq!(route("GET", "/v1/luns/vm1/read?offset=8192"), Route::ReadLun { alias: "vm1".into(), offset: 8192 });
        assert_eq!(route("GET", "/v1/luns/vm1/read"), Route::ReadLun { alias: "vm1".into(), offset: 0 });
        assert!(matches!(route("POST", "/v1/storage/reload"), Route::Do(Request::StorageReload)));
        assert_eq!(route("GET", "/v1/power/reboot"), Route::MethodNotAllowed);
        assert_eq!(route("POST", "/v1/status"), Route::MethodNotAllowed);
        assert_eq!(route("GET", "/"), Route::NotFound);
    }

    #[test]
    fn mutating_calls_need_the_token_over_the_network() {
        let t = Auth::Token("s3cret".into());
        assert_eq!(refuse(&t, Some("Bearer s3cret")), None);
        assert_eq!(refuse(&t, Some("Bearer s3cre")).unwrap().0, 401);
        assert_eq!(refuse(&t, Some("s3cret")).unwrap().0, 401);
        assert_eq!(refuse(&t, None).unwrap().0, 401);
        assert_eq!(refuse(&Auth::ReadOnly, Some("Bearer x")).unwrap().0, 403);
        assert_eq!(refuse(&Auth::Local, None), None);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = Status {
            node: "blade1".into(),
            version: "1.2\"3".into(),
            ready: true,
            ready_ms: Some(1200),
            uptime_s: 3.5,
            shutting_down: None,
            degraded: vec![],
            orphans_reaped: 2,
            cluster: Some("lab".into()),
            config_source: None,
            management: None,
            boot_phases: vec![],
            luns: vec![crate::storage::LunStatus {
                alias: "vm1".into(),
                wwid: "3600a".into(),
                paths_up: 1,
                paths_expected: 2,
                state: crate::storage::LunState::Degraded,
                dm: Some("dm-0".into()),
                size_bytes: Some(1 << 30),
                paths: vec![],
            }],
            hbas: vec![],
            aliases_source: None,
            cpus: 2,
            guests: vec![crate::proto::GuestStatus {
                name: "web".into(),
                state: GuestState::InDoubt,
                pid: Some(9),
                restarts: 0,
                uptime_s: 1.0,
                disks: vec![],
                reason: None,
            }],
            drained: None,
            drained_nodes: vec![],
            migrations: vec![],
            evacuation: None,
            kvm: false,
            memory: Default::default(),
            services: vec![crate::supervisor::ServiceStatus {
                name: "udevd".into(),
                state: ServiceState::Running,
                pid: Some(5),
                restarts: 3,
                last_exit: None,
                since_s: 1.0,
                reason: None,
            }],
        };
        let m = metrics(&s);
        assert!(m.contains("bladevisor_info{node=\"blade1\",version=\"1.2\\\"3\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_service_up{service=\"udevd\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_drained 0\n"), "{m}");
        // A guest in doubt is visible to alerting: its state set has every state, one at 1.
        assert!(m.contains("bladevisor_guest_state{guest=\"web\",state=\"in-doubt\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_guest_state{guest=\"web\",state=\"running\"} 0\n"), "{m}");
        assert_eq!(m.matches("bladevisor_guest_state{guest=\"web\"").count(), GuestState::ALL.len());
        assert!(m.contains("bladevisor_guest_running{guest=\"web\"} 0\n"), "{m}");
        assert!(m.contains("bladevisor_service_restarts_total{service=\"udevd\"} 3\n"), "{m}");
        assert!(m.contains("bladevisor_lun_paths_up{alias=\"vm1\",wwid=\"3600a\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_lun_state{alias=\"vm1\",state=\"degraded\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_lun_state{alias=\"vm1\",state=\"healthy\"} 0\n"), "{m}");
        assert!(
            m.contains("# TYPE bladevisor_orphans_reaped_total counter\nbladevisor_orphans_reaped_total 2\n"),
            "{m}"
        );
    }
}
