//! The blade's recent log lines in memory (`GET /v1/logs`, `bladevisor logs`): every event
//! PID 1 logs, with its fields, in a ring bounded in bytes, each with a sequence number so a
//! follower asks for what came after the last one it saw. Entries and their fields are cut to a
//! fixed size: no event, whatever a client or a peer made it say, grows the ring past its bound.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One logged event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// Milliseconds since the kernel started.
    pub boot_ms: u64,
    /// Unix milliseconds by the blade's clock (right once the clock is synchronised).
    pub unix_ms: u64,
    pub level: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

impl Entry {
    fn size(&self) -> usize {
        64 + self.level.len()
            + self.message.len()
            + self.fields.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
    }

    /// The value of field `key`, if it has one.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether this entry is about service `s` or guest `g` (when asked).
    pub fn matches(&self, service: Option<&str>, guest: Option<&str>) -> bool {
        let svc = self.field("service");
        service.is_none_or(|s| svc == Some(s))
            && guest.is_none_or(|g| self.field("guest") == Some(g) || svc == Some(&format!("guest-{g}")))
    }

    /// The line as the console shows it.
    pub fn line(&self) -> String {
        let fields: String = self.fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        format!("[{:>5}.{:03}] {:>5} {}{fields}", self.boot_ms / 1000, self.boot_ms % 1000, self.level, self.message)
    }
}

/// The most one message or field value keeps (the rest is cut, marked with `...`).
pub const MAX_TEXT: usize = 2048;
/// The most fields one entry keeps.
pub const MAX_FIELDS: usize = 16;

pub fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Entries, oldest first, at most `cap` bytes.
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    cap: usize,
    next: u64,
}

impl Ring {
    pub const fn new(cap: usize) -> Ring {
        Ring { entries: VecDeque::new(), bytes: 0, cap, next: 1 }
    }

    /// Keeps `e` (numbered), dropping the oldest beyond the bound; returns it as kept.
    pub fn push(&mut self, mut e: Entry) -> &Entry {
        e.seq = self.next;
        self.next += 1;
        self.bytes += e.size();
        self.entries.push_back(e);
        while self.bytes > self.cap && self.entries.len() > 1 {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.size(),
                None => break,
            }
        }
        self.entries.back().expect("just pushed")
    }

    /// Every entry kept, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Up to `max` entries after `since` that match, and the sequence number to ask from next.
    pub fn since(&self, since: u64, max: usize, service: Option<&str>, guest: Option<&str>) -> (Vec<Entry>, u64) {
        let mut out: Vec<Entry> = vec![];
        let mut next = since;
        for e in self.entries.iter().filter(|e| e.seq > since) {
            if out.len() >= max {
                break;
            }
            next = e.seq;
            if e.matches(service, guest) {
                out.push(e.clone());
            }
        }
        if out.len() < max {
            next = self.next - 1;
        }
        (out, next.max(since))
    }
}

/// The process's ring: 4 MiB of recent events.
pub static RING: Mutex<Ring> = Mutex::new(Ring::new(4 << 20));

#[cfg(test)]
mod tests {
    use super::*;

    fn e(msg: &str, fields: &[(&str, &str)]) -> Entry {
        Entry {
            seq: 0,
            boot_ms: 1500,
            unix_ms: 0,
            level: "INFO".into(),
            message: msg.into(),
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn a_follower_gets_what_came_after_and_the_ring_keeps_to_its_bound() {
        let mut r = Ring::new(1000);
        r.push(e("starting", &[("service", "guest-web")]));
        r.push(e("started", &[("service", "udevd")]));
        r.push(e("migration started", &[("guest", "web")]));
        let (all, next) = r.since(0, 100, None, None);
        assert_eq!((all.len(), next), (3, 3));
        let (web, _) = r.since(0, 100, None, Some("web"));
        assert_eq!(web.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["starting", "migration started"]);
        let (udevd, _) = r.since(0, 100, Some("udevd"), None);
        assert_eq!(udevd.len(), 1);
        assert_eq!(r.since(3, 100, None, None), (vec![], 3), "nothing new");
        let (first, next) = r.since(0, 1, None, None);
        assert_eq!((first.len(), next), (1, 1), "a page at a time");
        for i in 0..100 {
            r.push(e(&format!("line {i}"), &[]));
        }
        assert!(r.bytes <= 1000, "{}", r.bytes);
        let (kept, _) = r.since(0, 1000, None, None);
        assert_eq!(kept.last().unwrap().message, "line 99");
        assert!(kept[0].seq > 3, "the oldest went first");
        assert_eq!(kept[0].line().split_whitespace().next(), Some("["));
    }

    #[test]
    fn text_is_cut_at_its_bound() {
        let long = "é".repeat(3000);
        let c = cut(&long);
        assert!(c.len() <= MAX_TEXT + 3 && c.ends_with("..."));
        assert_eq!(cut("short"), "short");
    }
}
