//! The commands that need no blade: `check` (a configuration, alias file or credentials file
//! checked with exactly the code a blade runs at boot, before it is published) and
//! `import-libvirt` (libvirt domains as guest sections).

use std::path::{Path, PathBuf};

use crate::config::aliases::{self, Alias};

use super::read_text as read;

/// Reads and checks an alias file (any of the three formats).
fn alias_table(path: &Path) -> Result<Vec<Alias>, String> {
    let (_, mut table) = aliases::parse(path, &read(path)?).map_err(|e| e.to_string())?;
    aliases::validate(path, &mut table).map_err(|e| e.to_string())?;
    Ok(table)
}

/// What `bladevisor check` was given.
pub struct Check {
    pub config: PathBuf,
    pub aliases: Option<PathBuf>,
    /// A blade's credentials file, checked as that blade (`node`) would.
    pub credentials: Option<(PathBuf, String)>,
}

/// One line per file that passed, or the first error (file:line: ...).
pub fn check(c: &Check) -> Result<Vec<String>, String> {
    let cfg = crate::config::cluster::parse_cluster(&c.config, &read(&c.config)?).map_err(|e| e.to_string())?;
    let mut out = vec![format!(
        "{}: cluster {}: {} blades, {} guests, {} operators: OK",
        c.config.display(),
        cfg.cluster.name,
        cfg.nodes.len(),
        cfg.guests.len(),
        cfg.operators.len()
    )];
    if let Some(path) = &c.aliases {
        let table = alias_table(path)?;
        for (name, g) in &cfg.guests {
            if let Some(d) = g.disks.iter().find(|d| !table.iter().any(|a| a.alias == d.alias)) {
                return Err(format!(
                    "{}: guest {name}: disk {} is not in {}",
                    c.config.display(),
                    d.alias,
                    path.display()
                ));
            }
        }
        out.push(format!("{}: {} aliases, every guest's disk among them: OK", path.display(), table.len()));
    }
    if let Some((path, node)) = &c.credentials {
        if !cfg.nodes.contains_key(node) {
            return Err(format!("{}: {node} is not a blade of {}", path.display(), c.config.display()));
        }
        let source = path.display().to_string();
        let creds = crate::config::credentials::parse_credentials(&source, &read(path)?)?;
        let tls = creds.tls(&source, node)?;
        let until = tls.not_after.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok());
        let until = until.map(|t| format!(", valid until {}", t.date())).unwrap_or_default();
        out.push(format!("{source}: {node}'s credentials{until}: OK"));
    }
    Ok(out)
}

/// The blade named when `import-libvirt` is not told one.
const PLACEHOLDER: &str = "CHOOSE-A-BLADE";

/// `import-libvirt`: each domain's section with its notes as comments, or its error. Err when
/// any domain could not be imported at all.
pub fn import_libvirt(files: &[PathBuf], node: Option<&str>, aliases: Option<&Path>, json: bool) -> (String, bool) {
    let placed = node.unwrap_or(PLACEHOLDER);
    if json {
        let table = match aliases.map(alias_table).transpose() {
            Ok(t) => t.unwrap_or_default(),
            Err(e) => return (serde_json::json!({ "error": e }).to_string() + "\n", false),
        };
        let results: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let source = f.display().to_string();
                match read(f).and_then(|xml| crate::config::libvirt::import(&source, &xml, placed, &table)) {
                    Ok(i) => serde_json::json!({ "file": source, "name": i.name, "toml": i.toml, "notes": i.notes }),
                    Err(e) => serde_json::json!({ "file": source, "error": e }),
                }
            })
            .collect();
        let all = results.iter().all(|r| r.get("error").is_none());
        return (serde_json::Value::Array(results).to_string() + "\n", all);
    }
    let table = match aliases.map(alias_table).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => return (format!("# {e}\n"), false),
    };
    let mut out = String::new();
    let mut all = true;
    for f in files {
        let source = f.display().to_string();
        match read(f).and_then(|xml| crate::config::libvirt::import(&source, &xml, placed, &table)) {
            Ok(i) => {
                out.push_str(&format!("# imported from {source} (libvirt domain {})\n{}", i.name, i.toml));
                if node.is_none() {
                    out.push_str(&format!(
                        "# note: node: {PLACEHOLDER}: replace it with the blade it is placed on (--node)\n"
                    ));
                }
                for n in &i.notes {
                    out.push_str(&format!("# note: {n}\n"));
                }
            }
            Err(e) => {
                all = false;
                out.push_str(&format!("# CANNOT IMPORT {e}\n"));
            }
        }
        out.push('\n');
    }
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const CLUSTER: &str = "[cluster]\nname = \"prod\"\n[nodes.blade1]\nmacs = [\"52:54:00:b1:ad:01\"]\n\
                           [guests.web]\nnode = \"blade1\"\nmemory-mib = 512\ndisks = [{ alias = \"web-root\" }]\n";

    #[test]
    fn a_configuration_is_checked_with_the_blades_own_code_and_its_line() {
        let d = tempfile::tempdir().unwrap();
        let config = write(d.path(), "cluster.toml", CLUSTER);
        let aliases = write(d.path(), "bindings", "web-root 3600a0b800050c1f2000012345678ffff\n");
        let ok = check(&Check { config: config.clone(), aliases: Some(aliases), credentials: None }).unwrap();
        assert!(ok[0].ends_with("cluster.toml: cluster prod: 1 blades, 1 guests, 0 operators: OK"), "{ok:?}");
        assert!(ok[1].ends_with("bindings: 1 aliases, every guest's disk among them: OK"), "{ok:?}");
        let other = write(d.path(), "other", "db 3600a0b800050c1f2000012345678aaaa\n");
        let e = check(&Check { config: config.clone(), aliases: Some(other), credentials: None }).unwrap_err();
        assert!(e.contains("cluster.toml: guest web: disk web-root is not in ") && e.ends_with("other"), "{e}");
        let bad = write(d.path(), "bad.toml", &CLUSTER.replace("memory-mib = 512", "memory-mib = -1"));
        let e = check(&Check { config: bad, aliases: None, credentials: None }).unwrap_err();
        assert!(e.contains("bad.toml:7"), "file and line: {e}");
    }

    #[test]
    fn a_blades_credentials_are_checked_as_that_blade() {
        let d = tempfile::tempdir().unwrap();
        let config = write(d.path(), "cluster.toml", CLUSTER);
        let creds = d.path().join("creds");
        super::super::credentials::init(&creds, "prod").unwrap();
        let file = super::super::credentials::issue(&creds, "blade1", &[], 30).unwrap();
        let ok =
            check(&Check { config: config.clone(), aliases: None, credentials: Some((file.clone(), "blade1".into())) });
        assert!(ok.unwrap()[1].contains("blade1's credentials, valid until"));
        let e = check(&Check { config, aliases: None, credentials: Some((file, "blade2".into())) }).unwrap_err();
        assert!(e.contains("blade2 is not a blade of"), "{e}");
    }

    #[test]
    fn domains_are_imported_with_their_notes_and_failures_marked() {
        let d = tempfile::tempdir().unwrap();
        let web = write(d.path(), "web.xml", include_str!("../../tests/fixtures/libvirt/web.xml"));
        let junk = write(d.path(), "junk.xml", "<network/>");
        let (out, all) = import_libvirt(&[web.clone(), junk], Some("blade1"), None, false);
        assert!(!all);
        assert!(out.contains("# imported from ") && out.contains("[guests.web]\nnode = \"blade1\""), "{out}");
        assert!(out.contains("# note: graphics spice: not carried over"), "{out}");
        assert!(out.contains("# CANNOT IMPORT ") && out.contains("not a libvirt domain (<network>)"), "{out}");
        // The guest section parses as the configuration it is meant for.
        let section: String =
            out.lines().filter(|l| !l.starts_with('#')).take_while(|l| !l.is_empty()).collect::<Vec<_>>().join("\n");
        let cfg = format!(
            "[cluster]\nname = \"x\"\n[bridges.br0]\n[nodes.blade1]\nmacs = [\"52:54:00:b1:ad:01\"]\n{section}\n"
        );
        assert!(crate::config::cluster::parse_cluster(Path::new("c.toml"), &cfg).is_ok(), "{cfg}");
        // Without --node: a placeholder, said so.
        let (out, all) = import_libvirt(std::slice::from_ref(&web), None, None, false);
        assert!(
            all && out.contains("node = \"CHOOSE-A-BLADE\"") && out.contains("# note: node: CHOOSE-A-BLADE"),
            "{out}"
        );
    }
}
