//! Logging: human-readable lines on the console (the serial console on a blade); the same
//! events with their fields in an in-memory ring (`GET /v1/logs`, `bladevisor logs`) and, when
//! the configuration names a collector, sent to it (`[logging] remote`); and in the kernel's log
//! (`kmsg`).

pub mod kmsg;
pub mod remote;
pub mod ring;

use std::fmt;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::writer::MakeWriterExt;
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
    kmsg::init();
    // Lines the kernel puts on the console from its log are left to it (see kmsg).
    let console_writer = std::io::stderr.with_filter(|m: &tracing::Metadata<'_>| !kmsg::echoed(m.level()));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(console_writer)
        .with_ansi(false)
        .with_target(false)
        .with_timer(BootTime)
        .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level));
    let kmsg = kmsg::enabled().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(kmsg::Writer)
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level))
    });
    let capture = Capture.with_filter(tracing_subscriber::filter::LevelFilter::from_level(level));
    let _ = tracing_subscriber::registry().with(console).with(capture).with(kmsg).try_init();
}

/// Unix seconds by the blade's clock (what logs, metrics, certificates and NTP compare).
pub fn unix_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The same in milliseconds.
pub fn unix_ms() -> u64 {
    (unix_secs() * 1000.0) as u64
}

/// The layer that keeps every event in the ring and offers it to the remote collector.
struct Capture;

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record(field.name(), ring::cut(value));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.record(field.name(), ring::cut(&format!("{value:?}")));
    }
}

impl Fields {
    fn record(&mut self, name: &str, value: String) {
        if name == "message" {
            self.message = value;
        } else if self.fields.len() < ring::MAX_FIELDS {
            self.fields.push((name.to_string(), value));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let e = ring::Entry {
            seq: 0,
            boot_ms: boot_ms(),
            unix_ms: unix_ms(),
            level: event.metadata().level().to_string(),
            message: f.message,
            fields: f.fields,
        };
        // Offered under the ring's lock: a collector that starts now gets the ring's backlog and
        // then every later entry, none twice and none missed.
        let mut ring = ring::RING.lock().unwrap_or_else(|p| p.into_inner());
        let e = ring.push(e);
        remote::offer(e);
    }
}
