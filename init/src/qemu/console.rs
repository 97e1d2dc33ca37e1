//! Guest serial consoles: QEMU serves each on a unix socket; a reader per guest keeps the last
//! 64 KiB in a ring that the CLI can show and follow (by offset), across guest restarts.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

pub type Consoles = Arc<Mutex<BTreeMap<String, Ring>>>;

/// Keeps reading `socket` into the guest's ring for the life of the blade, reconnecting after
/// each guest restart.
pub fn follow(consoles: Consoles, guest: String, socket: PathBuf) {
    consoles.lock().unwrap_or_else(|p| p.into_inner()).entry(guest.clone()).or_default();
    crate::spawn_worker(&format!("console-{guest}"), move || loop {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                consoles.lock().unwrap_or_else(|p| p.into_inner()).entry(guest.clone()).or_default().push(&chunk[..n]);
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
}
