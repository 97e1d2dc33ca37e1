//! The kernel command line: the `bladevisor.*` keys of the brief's contract.

/// What the kernel command line asks of this boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    /// `bladevisor.config=<http URL>`: fetch the shared configuration from here.
    pub config_url: Option<String>,
    /// `bladevisor.aliases=<http URL>`: fetch the alias file from here.
    pub aliases_url: Option<String>,
    /// `bladevisor.credentials=<http URL>`: fetch this blade's credentials file from here.
    pub credentials_url: Option<String>,
    /// `bladevisor.node=<name>`: this blade's name in the configuration.
    pub node: Option<String>,
    /// `bladevisor.fetch-ca=<base64 DER>`: the CA that `https://` fetches are verified with
    /// (else the image's `/etc/bladevisor/fetch-ca.pem`).
    pub fetch_ca: Option<String>,
    /// `bladevisor.after-upgrade=undrain|drained`: this boot is an in-place upgrade's, and
    /// whether it undrains the blade once healthy (set by `upgrade`, never by hand).
    pub after_upgrade: Option<String>,
    /// `bladevisor.upgraded-from=<version>`: the release the upgrade left.
    pub upgraded_from: Option<String>,
    /// `bladevisor.upgrade-moved=<n>`, `bladevisor.upgrade-pause-ms=<ms>`: what the upgrade's
    /// evacuation moved, and the guests' total pause.
    pub upgrade_moved: Option<String>,
    pub upgrade_pause_ms: Option<String>,
    /// Keys that start with `bladevisor.` but mean nothing to this version: reported, not fatal.
    pub unknown: Vec<String>,
}

/// Splits a command line the way the kernel does: on spaces, with double quotes grouping.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

pub fn parse(line: &str) -> KernelCmdline {
    let mut k = KernelCmdline::default();
    for w in words(line) {
        let Some(rest) = w.strip_prefix("bladevisor.") else { continue };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let value = (!value.is_empty()).then(|| value.to_string());
        match key {
            "config" => k.config_url = value,
            "aliases" => k.aliases_url = value,
            "credentials" => k.credentials_url = value,
            "node" => k.node = value,
            "fetch-ca" => k.fetch_ca = value,
            "after-upgrade" => k.after_upgrade = value,
            "upgraded-from" => k.upgraded_from = value,
            "upgrade-moved" => k.upgrade_moved = value,
            "upgrade-pause-ms" => k.upgrade_pause_ms = value,
            _ => k.unknown.push(w.clone()),
        }
    }
    k
}

/// Reads `/proc/cmdline` (under `proc_root`); an unreadable one is an empty one.
pub fn read(proc_root: &std::path::Path) -> KernelCmdline {
    parse(&std::fs::read_to_string(proc_root.join("cmdline")).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bladevisor_keys_are_read_and_others_ignored() {
        let k = parse("BOOT_IMAGE=/vmlinuz console=ttyS0 bladevisor.config=http://10.0.2.2:8000/cluster.toml bladevisor.node=blade1 quiet\n");
        assert_eq!(k.config_url.as_deref(), Some("http://10.0.2.2:8000/cluster.toml"));
        assert_eq!(k.node.as_deref(), Some("blade1"));
        assert_eq!(k.aliases_url, None);
        assert!(k.unknown.is_empty());
    }

    #[test]
    fn quotes_group_words_and_unknown_keys_are_kept() {
        let k = parse(r#"bladevisor.aliases="http://h/a b" bladevisor.colour=blue bladevisor.node="#);
        assert_eq!(k.aliases_url.as_deref(), Some("http://h/a b"));
        assert_eq!(k.unknown, vec!["bladevisor.colour=blue"]);
        assert_eq!(k.node, None);
    }
}
