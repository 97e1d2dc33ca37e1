//! Guest serial consoles: QEMU serves each on a unix socket; a reader per guest keeps the last
//! 64 KiB in a ring that the CLI can show and follow (by offset), across guest restarts, and
//! writes what one operator types into it (one writer at a time; the others read).

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CAPACITY: usize = 64 * 1024;

/// A bounded byte ring addressed by absolute offsets (bytes since the reader started).
#[derive(Debug, Default)]
pub struct Ring {
    buf: VecDeque<u8>,
    /// Absolute offset of `buf[0]`.
    start: u64,
}

impl Ring {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        let over = self.buf.len().saturating_sub(CAPACITY);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
    }

    /// The bytes from `offset` on (from the oldest kept, if `offset` is older), and the offset
    /// to ask for next.
    pub fn read_from(&self, offset: u64) -> (Vec<u8>, u64) {
        let end = self.start + self.buf.len() as u64;
        let from = offset.clamp(self.start, end);
        let data = self.buf.iter().skip((from - self.start) as usize).copied().collect();
        (data, end)
    }
}

/// One guest's console: what it printed, the connection to type into while QEMU has it open,
/// and the session that may type.
#[derive(Debug, Default)]
pub struct Console {
    pub ring: Ring,
    input: Option<UnixStream>,
    writer: Option<Writer>,
}

#[derive(Debug, Clone)]
struct Writer {
    session: String,
    who: String,
    last: Instant,
}

/// A writer silent this long gives its place to the next one who types.
pub const WRITER_IDLE: Duration = Duration::from_secs(120);
/// The most one input call carries.
pub const MAX_INPUT: usize = 4096;

impl Console {
    /// Whether `session` may type now: it holds the writer's place, or the place is free (or
    /// its holder went quiet), and it takes it. Err names who types.
    pub fn claim(&mut self, session: &str, who: &str, now: Instant) -> Result<(), String> {
        match &self.writer {
            Some(w) if w.session != session && now.saturating_duration_since(w.last) < WRITER_IDLE => Err(format!(
                "{} is typing on this console (for {:.0} s more unless they type again); you can watch it",
                w.who,
                (WRITER_IDLE - now.saturating_duration_since(w.last)).as_secs_f64()
            )),
            _ => {
                self.writer = Some(Writer { session: session.into(), who: who.into(), last: now });
                Ok(())
            }
        }
    }

    /// Types `data` for `session` (see [`Console::claim`]).
    pub fn write(&mut self, session: &str, who: &str, data: &[u8], now: Instant) -> Result<(), String> {
        use std::io::Write;
        if data.len() > MAX_INPUT {
            return Err(format!("at most {MAX_INPUT} bytes at a time"));
        }
        self.claim(session, who, now)?;
        let input = self.input.as_mut().ok_or("the console is not connected (does the guest run?)")?;
        input.write_all(data).map_err(|e| format!("writing to the console: {e}"))
    }

    /// `session` leaves: the writer's place is free.
    pub fn detach(&mut self, session: &str) {
        if self.writer.as_ref().is_some_and(|w| w.session == session) {
            self.writer = None;
        }
    }
}

pub type Consoles = Arc<Mutex<BTreeMap<String, Console>>>;

/// Keeps reading `socket` into the guest's ring for the life of the blade, reconnecting after
/// each guest restart.
pub fn follow(consoles: Consoles, guest: String, socket: PathBuf) {
    consoles.lock().unwrap_or_else(|p| p.into_inner()).entry(guest.clone()).or_default();
    crate::spawn_worker(&format!("console-{guest}"), move || loop {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            let input = s.try_clone().ok();
            if let Some(i) = &input {
                let _ = i.set_write_timeout(Some(Duration::from_secs(2)));
            }
            consoles.lock().unwrap_or_else(|p| p.into_inner()).entry(guest.clone()).or_default().input = input;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                consoles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(guest.clone())
                    .or_default()
                    .ring
                    .push(&chunk[..n]);
            }
            if let Some(c) = consoles.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&guest) {
                c.input = None;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_bytes_and_offsets_stay_absolute() {
        let mut r = Ring::default();
        r.push(b"hello ");
        assert_eq!(r.read_from(0), (b"hello ".to_vec(), 6));
        r.push(b"world");
        assert_eq!(r.read_from(6), (b"world".to_vec(), 11));
        assert_eq!(r.read_from(11), (vec![], 11), "nothing new");
        r.push(&vec![b'x'; CAPACITY]);
        let (data, next) = r.read_from(0);
        assert_eq!(data.len(), CAPACITY, "bounded");
        assert_eq!(next, 11 + CAPACITY as u64);
        assert!(data.iter().all(|b| *b == b'x'), "the oldest bytes went first");
    }

    #[test]
    fn one_session_types_at_a_time_and_a_silent_one_gives_way() {
        let t0 = Instant::now();
        let mut c = Console::default();
        assert_eq!(c.claim("s1", "alice", t0), Ok(()));
        let e = c.claim("s2", "bob", t0 + Duration::from_secs(5)).unwrap_err();
        assert!(e.starts_with("alice is typing on this console"), "{e}");
        assert_eq!(c.claim("s1", "alice", t0 + Duration::from_secs(6)), Ok(()), "the writer goes on");
        assert_eq!(c.claim("s2", "bob", t0 + Duration::from_secs(6) + WRITER_IDLE), Ok(()), "alice went quiet");
        c.detach("s1");
        assert!(c.claim("s1", "alice", t0 + Duration::from_secs(130)).is_err(), "bob holds it");
        c.detach("s2");
        assert_eq!(c.claim("s1", "alice", t0 + Duration::from_secs(131)), Ok(()));
        let e = c.write("s1", "alice", b"x", t0 + Duration::from_secs(131)).unwrap_err();
        assert!(e.contains("not connected"), "{e}");
        assert!(c.write("s1", "alice", &vec![b'x'; MAX_INPUT + 1], t0).unwrap_err().contains("at most"));
    }

    #[test]
    fn what_is_typed_reaches_the_guests_socket() {
        let (mut qemu, ours) = UnixStream::pair().unwrap();
        let mut c = Console { input: Some(ours), ..Default::default() };
        c.write("s1", "alice", b"root\r", Instant::now()).unwrap();
        let mut got = [0u8; 5];
        qemu.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"root\r");
    }
}
