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
    Do(Request),
    NotFound,
    MethodNotAllowed,
}

pub fn route(method: &Method, path: &str) -> Route {
    let path = path.split('?').next().unwrap_or("");
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
        (_, ["v1", "status"]) | (_, ["metrics"]) | (_, ["v1", "power", _]) | (_, ["v1", "services", _, _]) => {
            Route::MethodNotAllowed
        }
        _ => Route::NotFound,
    }
}

fn json_response(code: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    let h = Header::from_bytes("Content-Type", "application/json").expect("static header");
    Response::from_string(body).with_status_code(code).with_header(h)
}

fn message(code: u16, key: &str, msg: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(code, serde_json::json!({ key: msg }).to_string())
}

/// Serves requests on a worker thread; mutating calls are checked against `auth`.
pub fn serve(server: Server, tx: Sender<Event>, auth: Auth, name: &str) {
    let name = name.to_string();
    crate::spawn_worker(&format!("api-{name}"), move || {
        for req in server.incoming_requests() {
            let route = route(req.method(), req.url());
            let resp = match route {
                Route::NotFound => message(404, "error", &format!("no such endpoint: {} {}", req.method(), req.url())),
                Route::MethodNotAllowed => {
                    message(405, "error", &format!("{} is not allowed on {}", req.method(), req.url()))
                }
                Route::Status => match ask(&tx, Request::Status) {
                    Reply::Status(s) => json_response(200, serde_json::to_string(&s).unwrap_or_default()),
                    Reply::Error(c, m) => message(c, "error", &m),
                    Reply::Ok(m) => message(200, "ok", &m),
                },
                Route::Metrics => match ask(&tx, Request::Status) {
                    Reply::Status(s) => {
                        let h = Header::from_bytes("Content-Type", "text/plain; version=0.0.4").expect("static header");
                        Response::from_string(metrics(&s)).with_header(h)
                    }
                    Reply::Error(c, m) => message(c, "error", &m),
                    Reply::Ok(m) => message(200, "ok", &m),
                },
                Route::Do(r) => {
                    let given = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.as_str().to_string());
                    if let Some((code, why)) = refuse(&auth, given.as_deref()) {
                        warn!(api = %name, remote = ?req.remote_addr(), request = %req.url(), "refused: {why}");
                        let _ = req.respond(message(code, "error", why));
                        continue;
                    }
                    match ask(&tx, r) {
                        Reply::Ok(m) => message(200, "ok", &m),
                        Reply::Error(c, m) => message(c, "error", &m),
                        Reply::Status(s) => json_response(200, serde_json::to_string(&s).unwrap_or_default()),
                    }
                }
            };
            let _ = req.respond(resp);
        }
    });
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
            cpus: 2,
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
        assert!(m.contains("bladevisor_service_restarts_total{service=\"udevd\"} 3\n"), "{m}");
        assert!(
            m.contains("# TYPE bladevisor_orphans_reaped_total counter\nbladevisor_orphans_reaped_total 2\n"),
            "{m}"
        );
    }
}
