//! Routing HTTP requests to the main loop, and rendering its replies as JSON or Prometheus text.

use std::sync::mpsc::Sender;

use tiny_http::{Header, Method, Response, Server};
use tracing::warn;

use super::{ask, Auth, Reply, Request, ServiceAction, Status};
use crate::pid1::shutdown::PowerAction;
use crate::pid1::Event;
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

pub fn route(method: &Method, url: &str) -> Route {
    let path = url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::Get, ["v1", "status"]) => Route::Status,
        (Method::Get, ["metrics"]) => Route::Metrics,
        (Method::Post, ["v1", "power", action]) => match PowerAction::parse(action) {
            Some(a) => Route::Do(Request::Power(a)),
            None => Route::NotFound,
        },
        (Method::Post, ["v1", "services", name, action]) => match ServiceAction::parse(action) {
            Some(a) => Route::Do(Request::Service { name: name.to_string(), action: a }),
            None => Route::NotFound,
        },
        (Method::Post, ["v1", "guests", name, "migrate"]) => match query(url, "to") {
            Some(to) => Route::Do(Request::Migrate {
                guest: name.to_string(),
                to,
                bandwidth_mbps: query(url, "max-bandwidth-mbps").and_then(|b| b.parse().ok()),
            }),
            None => Route::BadRequest("migrate needs ?to=<node>".into()),
        },
        (Method::Post, ["v1", "guests", name, "qmp"]) => Route::Qmp { guest: name.to_string() },
        (Method::Post, ["v1", "guests", name, "resolve"]) => Route::Do(Request::Resolve(name.to_string())),
        (Method::Post, ["v1", "guests", name, "migrate-cancel"]) => Route::Do(Request::MigrateCancel(name.to_string())),
        (Method::Post, ["v1", "guests", name, action]) => match ServiceAction::parse(action) {
            Some(a) => Route::Do(Request::Guest {
                name: name.to_string(),
                action: a,
                force: query(url, "force").is_some_and(|f| f == "1" || f == "true"),
            }),
            None => Route::NotFound,
        },
        (Method::Post, ["v1", "incoming", guest]) => match query(url, "from") {
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
        (Method::Post, ["v1", "incoming", guest, "resume"]) => Route::Do(Request::IncomingResume(guest.to_string())),
        (Method::Post, ["v1", "incoming", guest, "abort"]) => Route::Do(Request::IncomingAbort(guest.to_string())),
        (Method::Post, ["v1", "evacuate"]) => {
            Route::Do(Request::Evacuate { parallel: query(url, "parallel").and_then(|p| p.parse().ok()) })
        }
        (Method::Post, ["v1", "undrain"]) => Route::Do(Request::Undrain),
        (Method::Post, ["v1", "nodes", node, verb @ ("drained" | "undrained")]) => {
            Route::Do(Request::PeerDrained { node: node.to_string(), drained: *verb == "drained" })
        }
        (Method::Get, ["v1", "guests", name, "console"]) => {
            match query(url, "offset").unwrap_or_else(|| "0".into()).parse() {
                Ok(offset) => Route::Private(Request::Console { name: name.to_string(), offset }),
                Err(_) => Route::NotFound,
            }
        }
        (Method::Post, ["v1", "storage", "reload"]) => Route::Do(Request::StorageReload),
        (Method::Get, ["v1", "luns", alias, "read"]) => {
            match query(url, "offset").unwrap_or_else(|| "0".into()).parse() {
                Ok(offset) => Route::ReadLun { alias: alias.to_string(), offset },
                Err(_) => Route::NotFound,
            }
        }
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

type Body = Response<std::io::Cursor<Vec<u8>>>;

fn json_response(code: u16, body: String) -> Body {
    let h = Header::from_bytes("Content-Type", "application/json").expect("static header");
    Response::from_string(body).with_status_code(code).with_header(h)
}

fn message(code: u16, key: &str, msg: &str) -> Body {
    json_response(code, serde_json::json!({ key: msg }).to_string())
}

fn render(reply: Reply) -> Body {
    match reply {
        Reply::Status(s) => json_response(200, serde_json::to_string(&s).unwrap_or_default()),
        Reply::Ok(m) => message(200, "ok", &m),
        Reply::Error(c, m) => message(c, "error", &m),
        Reply::Json(v) => json_response(200, v.to_string()),
        Reply::ServiceState(s) => json_response(200, serde_json::json!({ "state": s }).to_string()),
        Reply::Deferred => message(500, "error", "no answer"),
    }
}

/// Reads 4 KiB at `offset` (rounded down to 4 KiB) of `/dev/mapper/<alias>` with O_DIRECT, so
/// the answer comes from the LUN through its paths, not from the page cache.
pub fn read_lun(alias: &str, offset: u64) -> Result<Vec<u8>, (u16, String)> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    if !crate::storage::aliases::valid_alias(alias) {
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

/// Serves requests on a worker thread; mutating calls are checked against `auth`.
pub fn serve(server: Server, tx: Sender<Event>, auth: Auth, name: &str) {
    let name = name.to_string();
    crate::spawn_worker(&format!("api-{name}"), move || {
        for req in server.incoming_requests() {
            let route = route(req.method(), req.url());
            if matches!(route, Route::Do(_) | Route::ReadLun { .. } | Route::Private(_) | Route::Qmp { .. }) {
                let given =
                    req.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
                if let Some((code, why)) = refuse(&auth, given.as_deref()) {
                    warn!(api = %name, remote = ?req.remote_addr(), request = %req.url(), "refused: {why}");
                    let _ = req.respond(message(code, "error", why));
                    continue;
                }
            }
            let mut req = req;
            let resp = match route {
                Route::BadRequest(m) => message(400, "error", &m),
                Route::NotFound => message(404, "error", &format!("no such endpoint: {} {}", req.method(), req.url())),
                Route::MethodNotAllowed => {
                    message(405, "error", &format!("{} is not allowed on {}", req.method(), req.url()))
                }
                Route::Status => render(ask(&tx, Request::Status)),
                Route::Metrics => match ask(&tx, Request::Status) {
                    Reply::Status(s) => {
                        let h = Header::from_bytes("Content-Type", "text/plain; version=0.0.4").expect("static header");
                        Response::from_string(metrics(&s)).with_header(h)
                    }
                    r => render(r),
                },
                Route::ReadLun { alias, offset } => match read_lun(&alias, offset) {
                    Ok(bytes) => json_response(
                        200,
                        serde_json::json!({ "alias": alias, "offset": offset & !4095, "length": bytes.len(), "hex": hex(&bytes) })
                            .to_string(),
                    ),
                    Err((code, e)) => message(code, "error", &e),
                },
                Route::Do(r) | Route::Private(r) => render(ask(&tx, r)),
                Route::Qmp { guest } => {
                    let mut body = String::new();
                    let _ = std::io::Read::read_to_string(&mut req.as_reader(), &mut body);
                    match serde_json::from_str::<serde_json::Value>(&body) {
                        Ok(command) if command["execute"].is_string() => {
                            render(ask(&tx, Request::GuestQmp { guest, command }))
                        }
                        _ => message(400, "error", &format!("the body must be a QMP command {{\"execute\": ...}}, not {body:?}")),
                    }
                }
            };
            let _ = req.respond(resp);
        }
    });
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
    let g = |x: &crate::guests::GuestStatus| format!("{{guest=\"{}\"}}", esc(&x.name));
    metric(
        "bladevisor_guest_running",
        "1 when the guest runs.",
        "gauge",
        s.guests.iter().map(|x| (g(x), if x.state == "running" { 1.0 } else { 0.0 })).collect(),
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
        s.guests.iter().filter(|x| x.state == "running").map(|x| (g(x), x.uptime_s)).collect(),
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
        assert_eq!(route(&Method::Get, "/v1/status"), Route::Status);
        assert_eq!(route(&Method::Get, "/v1/status?x=1"), Route::Status);
        assert_eq!(route(&Method::Get, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::Post, "/v1/power/poweroff"), Route::Do(Request::Power(PowerAction::Poweroff)));
        assert_eq!(
            route(&Method::Post, "/v1/services/udevd/restart"),
            Route::Do(Request::Service { name: "udevd".into(), action: ServiceAction::Restart })
        );
        assert_eq!(route(&Method::Post, "/v1/power/explode"), Route::NotFound);
        assert_eq!(
            route(&Method::Post, "/v1/guests/web/migrate?to=blade2&max-bandwidth-mbps=0.5"),
            Route::Do(Request::Migrate { guest: "web".into(), to: "blade2".into(), bandwidth_mbps: Some(0.5) })
        );
        assert!(matches!(route(&Method::Post, "/v1/guests/web/migrate"), Route::BadRequest(_)));
        assert_eq!(
            route(&Method::Post, "/v1/guests/web/start?force=1"),
            Route::Do(Request::Guest { name: "web".into(), action: ServiceAction::Start, force: true })
        );
        assert_eq!(
            route(&Method::Post, "/v1/incoming/web?from=blade1&caps=events,x-ignore-shared"),
            Route::Do(Request::Incoming {
                guest: "web".into(),
                from: "blade1".into(),
                caps: vec!["events".into(), "x-ignore-shared".into()]
            })
        );
        assert_eq!(
            route(&Method::Post, "/v1/nodes/blade1/drained"),
            Route::Do(Request::PeerDrained { node: "blade1".into(), drained: true })
        );
        assert_eq!(route(&Method::Post, "/v1/evacuate?parallel=2"), Route::Do(Request::Evacuate { parallel: Some(2) }));
        assert_eq!(route(&Method::Get, "/v1/evacuate"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::Post, "/v1/guests/web/resolve"), Route::Do(Request::Resolve("web".into())));
        assert_eq!(route(&Method::Post, "/v1/guests/web/qmp"), Route::Qmp { guest: "web".into() });
        assert_eq!(
            route(&Method::Get, "/v1/luns/vm1/read?offset=8192"),
            Route::ReadLun { alias: "vm1".into(), offset: 8192 }
        );
        assert_eq!(route(&Method::Get, "/v1/luns/vm1/read"), Route::ReadLun { alias: "vm1".into(), offset: 0 });
        assert!(matches!(route(&Method::Post, "/v1/storage/reload"), Route::Do(Request::StorageReload)));
        assert_eq!(route(&Method::Get, "/v1/power/reboot"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::Post, "/v1/status"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::Get, "/"), Route::NotFound);
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
            guests: vec![],
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
