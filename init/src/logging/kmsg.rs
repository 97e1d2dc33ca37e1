//! Every log line into the kernel's log (`/dev/kmsg`), so `dmesg` on the blade, a netconsole and
//! anything that reads the kernel log see bladevisor's lines beside the kernel's own, with their
//! severity (facility daemon).
//!
//! The kernel prints each record whose level is below the console log level on the console
//! itself; the console writer leaves those lines to it, so each line shows once (the kernel's
//! copy carries the kernel's timestamp). Lines the kernel keeps off the console (by default the
//! debug ones, and info ones under `quiet`) are written to the console by us as before.
//!
//! The kernel rate-limits writers of `/dev/kmsg` unless `kernel.printk_devkmsg` is `on`: PID 1
//! turns it on when it first opens the device. Where it cannot (`printk.devkmsg=` on the kernel
//! command line locks it), the console keeps its own copy of every line, since the kernel may drop
//! some of its copies.
//!
//! Only PID 1 of the initial namespaces writes `/dev/kmsg` by default: the CLI never does, and the
//! PID-1 tests point `BLADEVISOR_KMSG` at a file of their own (or `off`), never at the host's log.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::Level;

/// The longest record the kernel takes from userspace (its LOG_LINE_MAX is 1024 less a prefix);
/// longer lines are cut at a character boundary.
pub const MAX_RECORD: usize = 976;
/// syslog's facility `daemon`.
const FACILITY_DAEMON: u8 = 3;
/// How long a failed open waits before the next try (PID 1 logs before `/dev` is mounted).
const RETRY_MS: u64 = 1000;
/// How often the console log level is read again (`dmesg -n` may change it).
const LEVEL_REFRESH_MS: u64 = 5000;

/// Where the records go.
pub struct Kmsg {
    path: PathBuf,
    /// The path is the kernel's log (not a test's file): the kernel echoes records to the console.
    kernel: bool,
    file: Mutex<Option<File>>,
    next_open_ms: AtomicU64,
    /// `kernel.printk_devkmsg` is `on`: no record of ours is dropped by the rate limit.
    unlimited: AtomicBool,
    console_level: AtomicU8,
    level_read_ms: AtomicU64,
}

static KMSG: OnceLock<Kmsg> = OnceLock::new();

/// Picks the target once, at logging's start: `BLADEVISOR_KMSG` (a path, or `off`), else
/// `/dev/kmsg` for PID 1, else nothing.
pub fn init() {
    let target = match std::env::var_os("BLADEVISOR_KMSG") {
        Some(v) if v == "off" => None,
        Some(v) => Some((PathBuf::from(v), false)),
        None if std::process::id() == 1 => Some((PathBuf::from("/dev/kmsg"), true)),
        None => None,
    };
    if let Some((path, kernel)) = target {
        let _ = KMSG.set(Kmsg {
            path,
            kernel,
            file: Mutex::new(None),
            next_open_ms: AtomicU64::new(0),
            unlimited: AtomicBool::new(false),
            console_level: AtomicU8::new(0),
            level_read_ms: AtomicU64::new(0),
        });
    }
}

/// syslog's severity for a tracing level.
pub fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One record as written to `/dev/kmsg`: `<priority>bladevisor[pid]: line` and a newline (which
/// the kernel drops), one line, cut to what the kernel takes.
pub fn record(level: &Level, pid: u32, line: &str) -> Vec<u8> {
    let mut s = format!("<{}>bladevisor[{pid}]: ", FACILITY_DAEMON * 8 + severity(level));
    for c in line.trim_end_matches('\n').chars() {
        let c = if c == '\n' || c == '\r' { ' ' } else { c };
        if s.len() + c.len_utf8() >= MAX_RECORD {
            break;
        }
        s.push(c);
    }
    s.push('\n');
    s.into_bytes()
}

/// The console log level from `/proc/sys/kernel/printk` (its first number).
pub fn parse_console_level(printk: &str) -> Option<u8> {
    printk.split_whitespace().next()?.parse().ok()
}

/// Whether the kernel itself puts a line of this level on the console, so the console writer
/// leaves it out.
pub fn echoed(level: &Level) -> bool {
    KMSG.get().is_some_and(|k| k.echoes(level))
}

/// Sends one formatted line (called by the kmsg writer when a line is complete).
fn send(level: &Level, line: &[u8]) {
    let Some(k) = KMSG.get() else { return };
    let rec = record(level, std::process::id(), &String::from_utf8_lossy(line));
    let mut file = k.file.lock().unwrap_or_else(|p| p.into_inner());
    if file.is_none() {
        *file = k.open();
    }
    let sent = file.as_mut().is_some_and(|f| f.write_all(&rec).is_ok());
    if !sent {
        *file = None;
        k.next_open_ms.store(super::boot_ms() + RETRY_MS, Ordering::Relaxed);
        // The console writer may have left this line to the kernel: it must not be lost.
        if k.kernel_prints(level) {
            let _ = std::io::stderr().write_all(line);
        }
    }
}

impl Kmsg {
    fn open(&self) -> Option<File> {
        if super::boot_ms() < self.next_open_ms.load(Ordering::Relaxed) {
            return None;
        }
        let f = std::fs::OpenOptions::new().append(true).create(!self.kernel).open(&self.path);
        let Ok(f) = f else {
            self.next_open_ms.store(super::boot_ms() + RETRY_MS, Ordering::Relaxed);
            return None;
        };
        if self.kernel {
            let knob = "/proc/sys/kernel/printk_devkmsg";
            let _ = std::fs::write(knob, "on\n");
            let on = std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "on");
            self.unlimited.store(on, Ordering::Relaxed);
        }
        Some(f)
    }

    /// Whether the kernel puts a record of this level on the console (by the console log level
    /// last read) and drops none of ours.
    fn kernel_prints(&self, level: &Level) -> bool {
        self.kernel
            && self.unlimited.load(Ordering::Relaxed)
            && severity(level) < self.console_level.load(Ordering::Relaxed)
    }

    fn echoes(&self, level: &Level) -> bool {
        if !self.kernel || !self.unlimited.load(Ordering::Relaxed) {
            return false;
        }
        let now = super::boot_ms();
        if now >= self.level_read_ms.load(Ordering::Relaxed) {
            self.level_read_ms.store(now + LEVEL_REFRESH_MS, Ordering::Relaxed);
            let level = std::fs::read_to_string("/proc/sys/kernel/printk").ok().and_then(|s| parse_console_level(&s));
            self.console_level.store(level.unwrap_or(0), Ordering::Relaxed);
        }
        // Only while the device is open: a line is left to the kernel only if it will get there.
        let open = self.file.lock().map(|f| f.is_some()).unwrap_or(false);
        open && self.kernel_prints(level)
    }
}

/// The `MakeWriter` of the kmsg layer: each event's formatted text, sent as one record when the
/// formatter is done with it.
pub struct Writer;

pub struct Line {
    level: Level,
    buf: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line { level: Level::INFO, buf: Vec::new() }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line { level: *meta.level(), buf: Vec::new() }
    }
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // Bounded: a record longer than the kernel takes is cut anyway.
        let room = (MAX_RECORD * 4).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&b[..b.len().min(room)]);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            send(&self.level, &self.buf);
        }
    }
}

/// Whether any target was chosen (the layer is installed only then).
pub fn enabled() -> bool {
    KMSG.get().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_daemon_facility_and_severity() {
        assert_eq!(record(&Level::ERROR, 1, "boom\n"), b"<27>bladevisor[1]: boom\n");
        assert_eq!(record(&Level::WARN, 1, "w"), b"<28>bladevisor[1]: w\n");
        assert_eq!(record(&Level::INFO, 7, "i"), b"<30>bladevisor[7]: i\n");
        assert_eq!(record(&Level::DEBUG, 1, "d"), b"<31>bladevisor[1]: d\n");
    }

    #[test]
    fn a_record_is_one_line_cut_to_what_the_kernel_takes() {
        let r = record(&Level::INFO, 1, "a\nb\r\nc");
        assert_eq!(r, b"<30>bladevisor[1]: a b  c\n");
        let long = "é".repeat(2000);
        let r = record(&Level::INFO, 1, &long);
        assert!(r.len() <= MAX_RECORD && r.len() > MAX_RECORD - 2, "{}", r.len());
        assert!(String::from_utf8(r).is_ok(), "cut at a character boundary");
    }

    #[test]
    fn console_level_is_the_first_number() {
        assert_eq!(parse_console_level("4\t4\t1\t7\n"), Some(4));
        assert_eq!(parse_console_level("7 4 1 7"), Some(7));
        assert_eq!(parse_console_level(""), None);
    }
}
