//! Values a configuration file chooses that reach a `Duration`, a syscall or a QEMU argument:
//! checked where they are parsed, so that TOML's `inf`, `nan` and `-1` are refused with the
//! file and line, and nothing downstream can panic or wait forever on them.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest time any setting may name: a week. Longer is a typo, and an infinite one a hang.
pub const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// Checks a number of seconds: finite, not negative, at most [`MAX_SECONDS`].
pub fn check_seconds(v: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=MAX_SECONDS).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a number of seconds between 0 and {MAX_SECONDS} (a week)"))
    }
}

/// serde: a number of seconds, checked by [`check_seconds`].
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check_seconds(f64::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// serde: a factor a delay is multiplied by: finite, 1 to 100.
pub fn factor<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && (1.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("{v} is not a factor between 1 and 100")))
    }
}

/// serde: a bandwidth cap in Mbit/s (see [`super::migration::valid_bandwidth`]).
pub fn bandwidth<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if super::migration::valid_bandwidth(v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("{v}: {}", super::migration::BANDWIDTH_RANGE)))
    }
}

/// Seconds as a Duration, for values already checked; anything else (a value built in code)
/// becomes zero or [`MAX_SECONDS`] rather than a panic.
pub fn secs(v: f64) -> Duration {
    if v.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(v.clamp(0.0, MAX_SECONDS))
}

/// Whether `s` may be put inside one comma-separated QEMU option (`-cpu`, `-machine`, a device
/// model): 1-64 of `[A-Za-z0-9._-]`, so that it cannot add options of its own.
pub fn is_qemu_word(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The NIC models a guest may have: QEMU's common ones, every one migratable. Each needs its
/// iPXE ROM (`nic_rom`) in the image: mkosi.conf leaves out the ROMs of every other model (a
/// test below holds the two together).
pub const NIC_MODELS: &[&str] = &["virtio-net-pci", "e1000", "e1000e", "rtl8139", "vmxnet3"];

/// The iPXE ROM QEMU loads for a NIC model on the guests' (pinned, modern) machine types.
pub fn nic_rom(model: &str) -> String {
    format!("efi-{}.rom", if model == "virtio-net-pci" { "virtio" } else { model })
}

/// Why a token is unfit to be the cluster's credential, if it is: it must be printable ASCII
/// without spaces (it travels in an HTTP header) and long enough not to be guessed.
pub fn token_problem(t: &str) -> Option<String> {
    if t.len() < 16 {
        return Some(format!("the token must be at least 16 characters (it has {})", t.chars().count()));
    }
    if t.len() > 256 {
        return Some("the token must be at most 256 characters".into());
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("the token must be printable ASCII without spaces".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_keeps_the_rom_of_every_nic_model_a_guest_may_have() {
        // mkosi.conf's RemoveFiles= entries: exact paths, or a prefix ending in '*'.
        let conf = include_str!("../../../mkosi.conf");
        let removed: Vec<&str> = conf.lines().map(str::trim).filter(|l| l.starts_with("/usr/lib/ipxe/")).collect();
        assert!(!removed.is_empty(), "mkosi.conf no longer removes any iPXE ROM: this test reads the wrong lines");
        for model in NIC_MODELS {
            let rom = format!("/usr/lib/ipxe/qemu/{}", nic_rom(model));
            let by = removed.iter().find(|r| match r.split_once('*') {
                Some((prefix, suffix)) => rom.starts_with(prefix) && rom.ends_with(suffix),
                None => **r == rom,
            });
            assert_eq!(by, None, "NIC model {model} needs {rom}, which mkosi.conf removes");
        }
    }

    #[test]
    fn seconds_must_be_finite_and_in_range() {
        assert_eq!(check_seconds(0.0), Ok(0.0));
        assert_eq!(check_seconds(1.5), Ok(1.5));
        for bad in [f64::INFINITY, f64::NAN, -1.0, MAX_SECONDS + 1.0] {
            assert!(check_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(f64::INFINITY), Duration::from_secs_f64(MAX_SECONDS));
        assert_eq!(secs(-3.0), Duration::ZERO);
    }

    #[test]
    fn qemu_words_cannot_carry_options() {
        assert!(is_qemu_word("pc-q35-7.2") && is_qemu_word("Skylake-Server-v4") && is_qemu_word("host"));
        assert!(!is_qemu_word("virtio-net-pci,romfile=/run/bladevisor/cluster.toml"));
        assert!(!is_qemu_word("") && !is_qemu_word("a b") && !is_qemu_word(&"x".repeat(65)));
    }

    #[test]
    fn tokens_are_long_printable_ascii() {
        assert!(token_problem("lab-token-change-me").is_none());
        assert!(token_problem("").unwrap().contains("at least 16"));
        assert!(token_problem("short").is_some());
        assert!(token_problem("sixteen chars ok").unwrap().contains("without spaces"));
        assert!(token_problem("päßwörd-päßwörd-päßwörd").unwrap().contains("ASCII"));
    }
}
