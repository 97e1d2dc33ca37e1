//! Logging: human-readable lines on the console (the serial console on a blade), and the same
//! events with structured fields in the journal when journald's socket exists.

use std::fmt;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::prelude::*;

/// Seconds since the kernel started, like the kernel's own log: lines from dmesg and from
/// bladevisor line up on the console.
struct BootTime;

impl FormatTime for BootTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let ms = boot_ms();
        write!(w, "[{:>5}.{:03}]", ms / 1000, ms % 1000)
    }
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64) * 1000 + (t.tv_nsec as u64) / 1_000_000
}

/// Installs the global subscriber. `BLADEVISOR_LOG` (an env-filter-like level: error, warn,
/// info, debug) sets the level; info by default.
pub fn init() {
    let level = match std::env::var("BLADEVISOR_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_timer(BootTime)
        .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level));
    let journald = std::path::Path::new("/run/systemd/journal/socket")
        .exists()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|l| l.with_syslog_identifier("bladevisor".into()));
    let _ = tracing_subscriber::registry().with(console).with(journald).try_init();
}
