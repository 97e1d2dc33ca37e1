//! Our own QMP client, with tolerant types: QEMU adds events and run states between releases,
//! and a guest supervisor must not fall over on one it has not heard of.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// The QMP commands the API passes on to a guest's QEMU: queries that change nothing and read
/// nothing of the host's. Everything else QMP offers is, to a QEMU running on the blade, a way
/// to act as it (`human-monitor-command`, `migrate` to `exec:`, `blockdev-add`, `pmemsave`).
pub const READ_ONLY: &[&str] = &[
    "query-status",
    "query-name",
    "query-version",
    "query-kvm",
    "query-uuid",
    "query-migrate",
    "query-migrate-capabilities",
    "query-migrate-parameters",
    "query-block",
    "query-blockstats",
    "query-cpus-fast",
    "query-memory-size-summary",
    "query-balloon",
    "query-chardev",
];

pub fn is_read_only(command: &str) -> bool {
    READ_ONLY.contains(&command)
}

/// A guest's run state (`query-status`), with anything unknown kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Shutdown,
    InMigrate,
    PostMigrate,
    GuestPanicked,
    Other(String),
}

impl RunState {
    pub fn parse(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "shutdown" => RunState::Shutdown,
            "inmigrate" => RunState::InMigrate,
            "postmigrate" => RunState::PostMigrate,
            "guest-panicked" => RunState::GuestPanicked,
            o => RunState::Other(o.to_string()),
        }
    }
}

/// What one line from QMP is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Greeting {
        version: String,
    },
    Return(Value),
    Error {
        class: String,
        desc: String,
    },
    Event {
        name: String,
        data: Value,
    },
    /// Valid JSON of a shape we do not know: ignored, not fatal.
    Unknown(Value),
}

pub fn parse_line(line: &str) -> Result<Message, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("QMP sent invalid JSON ({e}): {line}"))?;
    Ok(if let Some(g) = v.get("QMP") {
        let q = &g["version"]["qemu"];
        Message::Greeting { version: format!("{}.{}.{}", q["major"], q["minor"], q["micro"]) }
    } else if let Some(r) = v.get("return") {
        Message::Return(r.clone())
    } else if let Some(e) = v.get("error") {
        Message::Error {
            class: e["class"].as_str().unwrap_or("").to_string(),
            desc: e["desc"].as_str().unwrap_or("").to_string(),
        }
    } else if let Some(ev) = v.get("event").and_then(|e| e.as_str()) {
        Message::Event { name: ev.to_string(), data: v.get("data").cloned().unwrap_or(Value::Null) }
    } else {
        Message::Unknown(v)
    })
}

/// The longest line taken from QMP, and the most events kept between two reads of them.
const MAX_LINE: u64 = 1 << 20;
const MAX_EVENTS: usize = 1024;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub version: String,
    /// Events that arrived while waiting for replies.
    pub events: Vec<(String, Value)>,
}

impl Qmp {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("QMP {}: {e}", path.display()))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp { reader: BufReader::new(s), writer, version: String::new(), events: vec![] };
        match q.next()? {
            Message::Greeting { version } => q.version = version,
            m => return Err(format!("QMP {}: expected a greeting, got {m:?}", path.display())),
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn next(&mut self) -> Result<Message, String> {
        use std::io::Read;
        let mut line = String::new();
        // QEMU runs the guest's code paths: a line from it is bounded like any other input.
        let n = (&mut self.reader).take(MAX_LINE).read_line(&mut line).map_err(|e| format!("QMP read: {e}"))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        if !line.ends_with('\n') && n as u64 == MAX_LINE {
            return Err(format!("QMP sent a line longer than {MAX_LINE} bytes"));
        }
        parse_line(&line)
    }

    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let msg = if args.is_null() || args == json!({}) {
            json!({ "execute": cmd })
        } else {
            json!({ "execute": cmd, "arguments": args })
        };
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP write: {e}"))?;
        loop {
            match self.next()? {
                Message::Return(v) => return Ok(v),
                Message::Error { class, desc } => return Err(format!("QMP {cmd}: {class}: {desc}")),
                Message::Event { name, data } => {
                    if self.events.len() >= MAX_EVENTS {
                        self.events.remove(0);
                    }
                    self.events.push((name, data))
                }
                Message::Greeting { .. } | Message::Unknown(_) => {}
            }
        }
    }

    pub fn status(&mut self) -> Result<RunState, String> {
        let v = self.execute("query-status", json!({}))?;
        Ok(RunState::parse(v["status"].as_str().unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session recorded from QEMU 7.2, with an event this client has never heard of.
    const TRANSCRIPT: &[&str] = &[
        r#"{"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u7"}, "capabilities": ["oob"]}}"#,
        r#"{"return": {}}"#,
        r#"{"timestamp": {"seconds": 1764140000, "microseconds": 1}, "event": "RTC_CHANGE", "data": {"offset": 0, "qom-path": "/machine/unattached/device[7]"}}"#,
        r#"{"timestamp": {"seconds": 1764140001, "microseconds": 2}, "event": "SOMETHING_FROM_QEMU_12", "data": {"x": [1, 2]}}"#,
        r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#,
        r#"{"error": {"class": "GenericError", "desc": "Parameter 'wwn' expects uint64"}}"#,
        r#"{"unexpected": "shape"}"#,
    ];

    #[test]
    fn a_recorded_session_parses_including_unknown_events() {
        let m: Vec<Message> = TRANSCRIPT.iter().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(m[0], Message::Greeting { version: "7.2.19".into() });
        assert_eq!(m[1], Message::Return(json!({})));
        assert!(matches!(&m[2], Message::Event { name, .. } if name == "RTC_CHANGE"));
        assert!(matches!(&m[3], Message::Event { name, .. } if name == "SOMETHING_FROM_QEMU_12"));
        assert_eq!(RunState::parse(m[4].clone().into_return()["status"].as_str().unwrap()), RunState::Running);
        assert_eq!(
            m[5],
            Message::Error { class: "GenericError".into(), desc: "Parameter 'wwn' expects uint64".into() }
        );
        assert!(matches!(m[6], Message::Unknown(_)));
        assert!(parse_line("not json").unwrap_err().starts_with("QMP sent invalid JSON"));
    }

    #[test]
    fn unknown_run_states_are_kept() {
        assert_eq!(RunState::parse("suspended"), RunState::Other("suspended".into()));
        assert_eq!(RunState::parse("inmigrate"), RunState::InMigrate);
    }

    impl Message {
        fn into_return(self) -> Value {
            match self {
                Message::Return(v) => v,
                m => panic!("not a return: {m:?}"),
            }
        }
    }

    #[test]
    fn a_client_survives_events_between_command_and_reply() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            writeln!(s, "{}", TRANSCRIPT[0]).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            writeln!(s, "{}", TRANSCRIPT[1]).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"));
            for l in &TRANSCRIPT[2..5] {
                writeln!(s, "{l}").unwrap();
            }
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.version, "7.2.19");
        assert_eq!(q.status().unwrap(), RunState::Running);
        assert_eq!(q.events.len(), 2);
        server.join().unwrap();
    }
}
