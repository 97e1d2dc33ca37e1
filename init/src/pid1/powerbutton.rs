//! The ACPI power button: the kernel reports it as a key press on an input device, not as a
//! signal, so without a listener a blade (or a lab VM asked for `system_powerdown`) would
//! ignore it. A press powers the blade off in order, like SIGPWR.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

/// Size of `struct input_event` on 64-bit Linux: timeval (16), type (2), code (2), value (4).
const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Whether a raw input event is the power key being pressed.
pub fn is_power_press(ev: &[u8; EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// `eventN` devices under a `/sys/class/input` tree whose device is a power button.
pub fn power_buttons(class_input: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(class_input)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("event"))
                .filter(|n| {
                    std::fs::read_to_string(class_input.join(n).join("device/name"))
                        .is_ok_and(|name| name.trim() == "Power Button")
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Watches for power buttons (their driver may load late, via udev) and calls `on_press` for
/// every press on any of them.
pub fn watch(class_input: PathBuf, dev: PathBuf, on_press: impl Fn() + Send + Sync + Clone + 'static) {
    crate::spawn_worker("power-button", move || {
        let mut seen = BTreeSet::new();
        loop {
            for ev in power_buttons(&class_input) {
                if seen.insert(ev.clone()) {
                    let path = dev.join(&ev);
                    let on_press = on_press.clone();
                    crate::spawn_worker(&format!("power-{ev}"), move || read_presses(&path, on_press));
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

fn read_presses(path: &Path, on_press: impl Fn()) {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            warn!(device = %path.display(), "cannot watch the power button: {e}");
            return;
        }
    };
    info!(device = %path.display(), "watching the power button");
    let mut ev = [0u8; EVENT_SIZE];
    while f.read_exact(&mut ev).is_ok() {
        if is_power_press(&ev) {
            on_press();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "the A key");
        assert!(!is_power_press(&event(0, 0, 0)), "sync");
    }

    #[test]
    fn power_buttons_are_found_by_name() {
        let t = tempfile::tempdir().unwrap();
        for (ev, name) in
            [("event0", "Power Button"), ("event1", "AT Translated Set 2 keyboard"), ("event2", "Power Button")]
        {
            std::fs::create_dir_all(t.path().join(ev).join("device")).unwrap();
            std::fs::write(t.path().join(ev).join("device/name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(power_buttons(t.path()), vec!["event0", "event2"]);
    }
}
