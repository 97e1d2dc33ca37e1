//! The one route table, used both ways: the server turns a method and URL into a [`Request`];
//! the CLI, the peer client and the lab turn a [`Request`] into its method and URL. Names are
//! percent-encoded on the way out and decoded on the way in, so any name survives the trip.

use super::request::{Operator, Peer, Read, Request};
use super::{PowerAction, ServiceAction};
use crate::migration::{valid_bandwidth, BANDWIDTH_RANGE, MAX_PARALLEL};

/// Why a method and URL are not a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    MethodNotAllowed,
    Invalid(String),
}

/// Percent-encodes everything but unreserved characters.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; a malformed escape or a result that is not UTF-8 is an error.
pub fn dec(s: &str) -> Result<String, RouteError> {
    let bad = || RouteError::Invalid(format!("{:?} is not a well-formed URL component", shorten(s)));
    let (b, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn shorten(s: &str) -> String {
    crate::config::error::shorten(s, 80)
}

/// A query parameter as sent (still encoded).
fn query_raw<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    target.split_once('?')?.1.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn query(target: &str, key: &str) -> Result<Option<String>, RouteError> {
    query_raw(target, key).map(dec).transpose()
}

/// A comma-separated query parameter: split first, then each item decoded.
fn query_list(target: &str, key: &str) -> Result<Vec<String>, RouteError> {
    query_raw(target, key).unwrap_or_default().split(',').filter(|c| !c.is_empty()).map(dec).collect()
}

fn offset(target: &str) -> Result<u64, RouteError> {
    match query(target, "offset")? {
        None => Ok(0),
        Some(o) => o.parse().map_err(|_| RouteError::Invalid(format!("offset {:?} is not a number", shorten(&o)))),
    }
}

/// The request a method and URL ask for.
pub fn route(method: &str, target: &str) -> Result<Request, RouteError> {
    use Request::{Operator as Op, Peer as P, Read as R};
    let path = target.split('?').next().unwrap_or("");
    let parts: Vec<String> = path.trim_matches('/').split('/').map(dec).collect::<Result<_, _>>()?;
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let name = |s: &str| s.to_string();
    let required = |key: &str, what: &str| {
        query(target, key)?.ok_or_else(|| RouteError::Invalid(format!("{what} needs ?{key}=<node>")))
    };
    Ok(match (method, parts.as_slice()) {
        ("GET", ["v1", "status"]) => R(Read::Status),
        ("GET", ["metrics"]) => R(Read::Metrics),
        ("GET", ["v1", "capacity"]) => R(Read::Capacity),
        ("GET", ["v1", "cluster", "guests"]) => Op(Operator::ClusterGuests),
        ("GET", ["v1", "logs"]) => Op(Operator::Logs {
            since: match query(target, "since")? {
                None => 0,
                Some(n) => {
                    n.parse().map_err(|_| RouteError::Invalid(format!("since {:?} is not a number", shorten(&n))))?
                }
            },
            service: query(target, "service")?,
            guest: query(target, "guest")?,
        }),
        ("GET", ["v1", "guests", g]) => R(Read::Guest(name(g))),
        ("GET", ["v1", "guests", g, "console"]) => Op(Operator::Console { name: name(g), offset: offset(target)? }),
        ("POST", ["v1", "guests", g, "console"]) => Op(Operator::ConsoleInput {
            name: name(g),
            session: required("session", "console input")?,
            who: String::new(),
            data: vec![],
        }),
        ("POST", ["v1", "guests", g, "console", "detach"]) => {
            Op(Operator::ConsoleDetach { name: name(g), session: required("session", "console detach")? })
        }
        ("GET", ["v1", "luns", alias, "read"]) => Op(Operator::ReadLun { alias: name(alias), offset: offset(target)? }),
        ("POST", ["v1", "power", action]) => {
            Op(Operator::Power(PowerAction::parse(action).ok_or(RouteError::NotFound)?))
        }
        ("POST", ["v1", "services", s, action]) => {
            Op(Operator::Service { name: name(s), action: ServiceAction::parse(action).ok_or(RouteError::NotFound)? })
        }
        ("POST", ["v1", "storage", "reload"]) => {
            Op(Operator::StorageReload { all: query(target, "all")?.is_some_and(|f| f == "1" || f == "true") })
        }
        ("POST", ["v1", "storage", "rescan"]) => Op(Operator::StorageRescan),
        ("POST", ["v1", "leases", "init"]) => {
            Op(Operator::LeasesInit { force: query(target, "force")?.is_some_and(|f| f == "1" || f == "true") })
        }
        ("POST", ["v1", "guests", g, "migrate"]) => {
            let bandwidth_mbps = match query(target, "max-bandwidth-mbps")?.map(|b| b.parse::<f64>()) {
                None => None,
                Some(Ok(b)) if valid_bandwidth(b) => Some(b),
                Some(_) => return Err(RouteError::Invalid(BANDWIDTH_RANGE.into())),
            };
            Op(Operator::Migrate { guest: name(g), to: required("to", "migrate")?, bandwidth_mbps })
        }
        ("POST", ["v1", "guests", g, "qmp"]) => Op(Operator::GuestQmp { guest: name(g), command: Default::default() }),
        ("POST", ["v1", "guests", g, "resolve"]) => Op(Operator::Resolve(name(g))),
        ("POST", ["v1", "guests", g, "migrate-cancel"]) => Op(Operator::MigrateCancel(name(g))),
        ("POST", ["v1", "guests", g, action]) => Op(Operator::Guest {
            name: name(g),
            action: ServiceAction::parse(action).ok_or(RouteError::NotFound)?,
            force: query(target, "force")?.is_some_and(|f| f == "1" || f == "true"),
        }),
        ("POST", ["v1", "evacuate"]) => match query(target, "parallel")?.map(|p| p.parse::<usize>()) {
            None => Op(Operator::Evacuate { parallel: None }),
            Some(Ok(p)) if (1..=MAX_PARALLEL).contains(&p) => Op(Operator::Evacuate { parallel: Some(p) }),
            Some(_) => return Err(RouteError::Invalid(format!("parallel must be 1-{MAX_PARALLEL}"))),
        },
        ("POST", ["v1", "undrain"]) => Op(Operator::Undrain),
        ("POST", ["v1", "upgrade"]) => {
            let flag = |key: &str| -> Result<bool, RouteError> {
                Ok(query(target, key)?.is_some_and(|f| f == "1" || f == "true"))
            };
            Op(Operator::Upgrade {
                base_url: query(target, "from")?
                    .ok_or_else(|| RouteError::Invalid("upgrade needs ?from=<release folder URL>".into()))?,
                undrain: flag("undrain")?,
                stop_guests: flag("stop-guests")?,
            })
        }
        ("POST", ["v1", "incoming", g]) => P(Peer::Incoming {
            guest: name(g),
            from: required("from", "incoming")?,
            caps: query_list(target, "caps")?,
            release: query(target, "release")?.map(|r| shorten(&r)),
        }),
        ("POST", ["v1", "incoming", g, "resume"]) => {
            P(Peer::IncomingResume { guest: name(g), from: required("from", "resume")? })
        }
        ("POST", ["v1", "incoming", g, "abort"]) => {
            P(Peer::IncomingAbort { guest: name(g), from: required("from", "abort")? })
        }
        ("POST", ["v1", "nodes", n, verb @ ("drained" | "undrained")]) => {
            P(Peer::Drained { node: name(n), drained: *verb == "drained" })
        }
        (_, ["v1", "status" | "capacity" | "evacuate" | "undrain" | "upgrade"])
        | (_, ["v1", "cluster", "guests"])
        | (_, ["v1", "logs"])
        | (_, ["metrics"])
        | (_, ["v1", "guests", _])
        | (_, ["v1", "guests", _, _])
        | (_, ["v1", "guests", _, "console", "detach"])
        | (_, ["v1", "power" | "incoming", ..])
        | (_, ["v1", "services" | "nodes", _, _])
        | (_, ["v1", "storage" | "leases", "reload" | "init" | "rescan"])
        | (_, ["v1", "luns", _, "read"]) => return Err(RouteError::MethodNotAllowed),
        _ => return Err(RouteError::NotFound),
    })
}

impl Request {
    pub fn method(&self) -> &'static str {
        match self {
            Request::Read(_)
            | Request::Operator(
                Operator::Console { .. } | Operator::ReadLun { .. } | Operator::ClusterGuests | Operator::Logs { .. },
            ) => "GET",
            _ => "POST",
        }
    }

    /// The request's URL path and query: what [`route`] turns back into this request.
    pub fn target(&self) -> String {
        match self {
            Request::Read(r) => match r {
                Read::Status => "/v1/status".into(),
                Read::Metrics => "/metrics".into(),
                Read::Capacity => "/v1/capacity".into(),
                Read::Guest(g) => format!("/v1/guests/{}", enc(g)),
            },
            Request::Operator(o) => match o {
                Operator::Power(a) => format!("/v1/power/{}", a.as_str()),
                Operator::Service { name, action } => format!("/v1/services/{}/{}", enc(name), action.as_str()),
                Operator::Guest { name, action, force } => {
                    format!("/v1/guests/{}/{}{}", enc(name), action.as_str(), if *force { "?force=1" } else { "" })
                }
                Operator::Migrate { guest, to, bandwidth_mbps } => format!(
                    "/v1/guests/{}/migrate?to={}{}",
                    enc(guest),
                    enc(to),
                    bandwidth_mbps.map(|b| format!("&max-bandwidth-mbps={b}")).unwrap_or_default()
                ),
                Operator::MigrateCancel(g) => format!("/v1/guests/{}/migrate-cancel", enc(g)),
                Operator::Resolve(g) => format!("/v1/guests/{}/resolve", enc(g)),
                Operator::Evacuate { parallel } => {
                    format!("/v1/evacuate{}", parallel.map(|p| format!("?parallel={p}")).unwrap_or_default())
                }
                Operator::Undrain => "/v1/undrain".into(),
                Operator::ClusterGuests => "/v1/cluster/guests".into(),
                Operator::Logs { since, service, guest } => {
                    let mut q = format!("/v1/logs?since={since}");
                    if let Some(s) = service {
                        q.push_str(&format!("&service={}", enc(s)));
                    }
                    if let Some(g) = guest {
                        q.push_str(&format!("&guest={}", enc(g)));
                    }
                    q
                }
                Operator::GuestQmp { guest, .. } => format!("/v1/guests/{}/qmp", enc(guest)),
                Operator::Console { name, offset } => format!("/v1/guests/{}/console?offset={offset}", enc(name)),
                Operator::ConsoleInput { name, session, .. } => {
                    format!("/v1/guests/{}/console?session={}", enc(name), enc(session))
                }
                Operator::ConsoleDetach { name, session } => {
                    format!("/v1/guests/{}/console/detach?session={}", enc(name), enc(session))
                }
                Operator::ReadLun { alias, offset } => format!("/v1/luns/{}/read?offset={offset}", enc(alias)),
                Operator::StorageReload { all } => format!("/v1/storage/reload{}", if *all { "?all=1" } else { "" }),
                Operator::StorageRescan => "/v1/storage/rescan".into(),
                Operator::LeasesInit { force } => format!("/v1/leases/init{}", if *force { "?force=1" } else { "" }),
                Operator::Upgrade { base_url, undrain, stop_guests } => format!(
                    "/v1/upgrade?from={}{}{}",
                    enc(base_url),
                    if *undrain { "&undrain=1" } else { "" },
                    if *stop_guests { "&stop-guests=1" } else { "" }
                ),
            },
            Request::Peer(p) => match p {
                Peer::Incoming { guest, from, caps, release } => format!(
                    "/v1/incoming/{}?from={}&caps={}{}",
                    enc(guest),
                    enc(from),
                    caps.iter().map(|c| enc(c)).collect::<Vec<_>>().join(","),
                    release.as_deref().map(|r| format!("&release={}", enc(r))).unwrap_or_default()
                ),
                Peer::IncomingResume { guest, from } => {
                    format!("/v1/incoming/{}/resume?from={}", enc(guest), enc(from))
                }
                Peer::IncomingAbort { guest, from } => format!("/v1/incoming/{}/abort?from={}", enc(guest), enc(from)),
                Peer::Drained { node, drained } => {
                    format!("/v1/nodes/{}/{}", enc(node), if *drained { "drained" } else { "undrained" })
                }
            },
        }
    }

    /// The request's body, when it has one (a QMP query).
    pub fn body(&self) -> Option<String> {
        match self {
            Request::Operator(Operator::GuestQmp { command, .. }) => Some(command.to_string()),
            Request::Operator(Operator::ConsoleInput { data, .. }) => {
                Some(data.iter().map(|b| format!("{b:02x}")).collect())
            }
            _ => None,
        }
    }

    /// The largest body a route takes, known before the body is read: a QMP query's JSON, the
    /// hex of what is typed on a console; every other call carries its few arguments in the URL.
    pub fn body_limit(&self) -> usize {
        match self {
            Request::Operator(Operator::GuestQmp { .. }) => QMP_BODY_LIMIT,
            Request::Operator(Operator::ConsoleInput { .. }) => 2 * crate::qemu::console::MAX_INPUT,
            _ => 0,
        }
    }
}

/// The bytes of a console input's body (hex), or why not.
pub fn console_bytes(body: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body must be hex digits".to_string())?.trim();
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the body must be an even number of hex digits (the bytes typed)".into());
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string())).collect()
}

/// The largest QMP query the API takes.
pub const QMP_BODY_LIMIT: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// One request of every kind, with names that need escaping where names may appear.
    fn every_request() -> Vec<Request> {
        use Request::{Operator as Op, Peer as P, Read as R};
        let odd = "we b/1?&=%".to_string();
        vec![
            R(Read::Status),
            R(Read::Metrics),
            R(Read::Capacity),
            R(Read::Guest(odd.clone())),
            Op(Operator::Power(PowerAction::Poweroff)),
            Op(Operator::Service { name: "udevd".into(), action: ServiceAction::Restart }),
            Op(Operator::Guest { name: odd.clone(), action: ServiceAction::Start, force: true }),
            Op(Operator::Guest { name: "web".into(), action: ServiceAction::Kill, force: false }),
            Op(Operator::Migrate { guest: "web".into(), to: odd.clone(), bandwidth_mbps: Some(0.5) }),
            Op(Operator::Migrate { guest: "web".into(), to: "blade2".into(), bandwidth_mbps: None }),
            Op(Operator::MigrateCancel("web".into())),
            Op(Operator::Resolve(odd.clone())),
            Op(Operator::Evacuate { parallel: Some(2) }),
            Op(Operator::Evacuate { parallel: None }),
            Op(Operator::Undrain),
            Op(Operator::ClusterGuests),
            Op(Operator::Logs { since: 0, service: None, guest: None }),
            Op(Operator::Logs { since: 42, service: Some(odd.clone()), guest: Some("web".into()) }),
            Op(Operator::GuestQmp { guest: "web".into(), command: serde_json::Value::Null }),
            Op(Operator::Console { name: "web".into(), offset: 77 }),
            Op(Operator::ConsoleInput { name: odd.clone(), session: "s 1".into(), who: String::new(), data: vec![] }),
            Op(Operator::ConsoleDetach { name: "web".into(), session: odd.clone() }),
            Op(Operator::ReadLun { alias: "vm1".into(), offset: 8192 }),
            Op(Operator::StorageReload { all: false }),
            Op(Operator::StorageReload { all: true }),
            Op(Operator::StorageRescan),
            Op(Operator::LeasesInit { force: true }),
            Op(Operator::LeasesInit { force: false }),
            Op(Operator::Upgrade {
                base_url: "http://10.0.2.2:8000/rel/1.5?x=&y".into(),
                undrain: true,
                stop_guests: false,
            }),
            Op(Operator::Upgrade { base_url: "https://deploy/r".into(), undrain: false, stop_guests: true }),
            P(Peer::Incoming {
                guest: odd.clone(),
                from: "blade1".into(),
                caps: vec!["events".into(), "x,y".into()],
                release: Some("1.2+b&c".into()),
            }),
            P(Peer::Incoming { guest: "web".into(), from: "blade1".into(), caps: vec![], release: None }),
            P(Peer::IncomingResume { guest: "web".into(), from: "blade1".into() }),
            P(Peer::IncomingAbort { guest: odd.clone(), from: "blade2".into() }),
            P(Peer::Drained { node: "blade1".into(), drained: true }),
            P(Peer::Drained { node: "blade1".into(), drained: false }),
        ]
    }

    #[test]
    fn every_request_survives_the_trip_through_its_url() {
        for r in every_request() {
            let (m, t) = (r.method(), r.target());
            assert_eq!(route(m, &t), Ok(r.clone()), "{m} {t}");
        }
    }

    #[test]
    fn the_first_releases_urls_still_route() {
        let r = |m, t| route(m, t).unwrap();
        assert_eq!(r("GET", "/v1/status?x=1"), Request::Read(Read::Status));
        assert_eq!(
            r("POST", "/v1/incoming/web?from=blade1&caps=events,x-ignore-shared"),
            Request::Peer(Peer::Incoming {
                guest: "web".into(),
                from: "blade1".into(),
                caps: vec!["events".into(), "x-ignore-shared".into()],
                release: None,
            })
        );
        assert_eq!(
            r("GET", "/v1/luns/vm1/read"),
            Request::Operator(Operator::ReadLun { alias: "vm1".into(), offset: 0 })
        );
        assert_eq!(
            r("POST", "/v1/guests/web/start?force=true"),
            Request::Operator(Operator::Guest { name: "web".into(), action: ServiceAction::Start, force: true })
        );
    }

    #[test]
    fn what_is_not_a_request_says_why() {
        assert_eq!(route("POST", "/v1/power/explode"), Err(RouteError::NotFound));
        assert_eq!(route("GET", "/"), Err(RouteError::NotFound));
        assert_eq!(route("GET", "/v1/evacuate"), Err(RouteError::MethodNotAllowed));
        assert_eq!(route("GET", "/v1/power/reboot"), Err(RouteError::MethodNotAllowed));
        assert_eq!(route("POST", "/v1/status"), Err(RouteError::MethodNotAllowed));
        assert_eq!(route("DELETE", "/v1/guests/web"), Err(RouteError::MethodNotAllowed));
        assert!(matches!(route("POST", "/v1/guests/web/migrate"), Err(RouteError::Invalid(m)) if m.contains("?to=")));
        assert!(matches!(route("POST", "/v1/evacuate?parallel=0"), Err(RouteError::Invalid(_))));
        assert!(matches!(
            route("POST", "/v1/guests/web/migrate?to=b&max-bandwidth-mbps=NaN"),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(route("GET", "/v1/guests/%ZZ"), Err(RouteError::Invalid(_))));
        assert!(matches!(route("GET", "/v1/guests/%FF"), Err(RouteError::Invalid(_))));
        assert!(matches!(route("GET", "/v1/guests/web/console?offset=-1"), Err(RouteError::Invalid(_))));
    }

    #[test]
    fn only_reads_go_without_the_token() {
        for r in every_request() {
            assert_eq!(r.needs_token(), !matches!(r, Request::Read(_)), "{r:?}");
        }
        let qmp = Request::Operator(Operator::GuestQmp { guest: "w".into(), command: Default::default() });
        assert_eq!(qmp.body_limit(), QMP_BODY_LIMIT);
        assert_eq!(Request::Read(Read::Status).body_limit(), 0);
    }
}
