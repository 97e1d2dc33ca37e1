//! The shared alias file: which LUN is `/dev/mapper/<alias>` on every blade, and how many paths
//! it should have. Three formats, recognised by content, so operators can bring the file they
//! already push to their hypervisors:
//!
//! - TOML: `[aliases]` with `vm1 = { wwid = "3600a0b80...", paths = 2 }`
//! - multipath's `bindings` file: `vm1 3600a0b80...` per line
//! - a multipath.conf `multipaths { multipath { wwid ... alias ... } }` section
//!
//! Every error names the file and line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::error::{find_key_line, shorten, ConfigError};

/// One alias: the name every blade gives the LUN, its WWID, and its expected path count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub alias: String,
    /// As udev's scsi_id reports it (`ID_SERIAL`, what multipath matches): e.g. `3600a0b80...`.
    pub wwid: String,
    /// Paths the fabric should give this LUN; None when the format cannot say (bindings,
    /// multipath.conf): then it is learnt (see `health`).
    pub paths: Option<u32>,
    /// Where it was defined, for messages.
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Bindings,
    MultipathConf,
}

/// A device-mapper name that udev and /dev/mapper handle without escaping.
pub fn valid_alias(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 127
        && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        && !a.starts_with('.')
        && !a.starts_with('-')
}

/// Normalises a WWID to multipath's form: `naa.<hex>` (the kernel's sysfs form) becomes
/// `3<hex>`; hex digits are lower-cased. Vendor-format IDs (not hex) are kept as given.
pub fn normalise_wwid(w: &str) -> String {
    if let Some(hex) = w.strip_prefix("naa.") {
        return format!("3{}", hex.to_ascii_lowercase());
    }
    if w.chars().all(|c| c.is_ascii_hexdigit()) {
        return w.to_ascii_lowercase();
    }
    w.to_string()
}

fn valid_wwid(w: &str) -> bool {
    !w.is_empty() && w.len() <= 128 && w.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

/// Recognises the format by content.
pub fn detect(text: &str) -> Format {
    let code: Vec<&str> =
        text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect();
    if code.iter().any(|l| l.starts_with("multipaths") || l.starts_with("multipath {") || *l == "multipath") {
        Format::MultipathConf
    } else if code.iter().any(|l| l.starts_with('[') || l.contains('=')) {
        Format::Toml
    } else {
        Format::Bindings
    }
}

/// One alias in TOML: `vm1 = { wwid = "...", paths = 2 }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TomlEntry {
    pub wwid: String,
    pub paths: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    aliases: BTreeMap<String, TomlEntry>,
}

fn parse_toml(file: &Path, text: &str) -> Result<Vec<Alias>, ConfigError> {
    let f: TomlFile = toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
    from_toml_table(file, text, f.aliases)
}

/// Aliases from an `[aliases]` table (of an alias file or of the cluster configuration),
/// validated, with the lines they are on in `text`.
pub fn from_toml_table(file: &Path, text: &str, table: BTreeMap<String, TomlEntry>) -> Result<Vec<Alias>, ConfigError> {
    let mut out = vec![];
    for (alias, e) in table {
        let line = find_key_line(text, "aliases", &alias).unwrap_or(0);
        if e.paths.is_some_and(|p| !(1..=64).contains(&p)) {
            return Err(ConfigError::at_line(file, line, format!("alias {alias}: paths must be 1-64")));
        }
        out.push(Alias { alias, wwid: e.wwid, paths: e.paths, line });
    }
    out.sort_by_key(|a| a.line);
    validate(file, &mut out)?;
    Ok(out)
}

fn parse_bindings(file: &Path, text: &str) -> Result<Vec<Alias>, ConfigError> {
    let mut out = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() != 2 {
            return Err(ConfigError::at_line(
                file,
                i + 1,
                format!("expected \"<alias> <wwid>\" (a multipath bindings line), found {line:?}"),
            ));
        }
        out.push(Alias { alias: words[0].into(), wwid: words[1].into(), paths: None, line: i + 1 });
    }
    Ok(out)
}

/// Reads the `multipaths { multipath { ... } }` section of a multipath.conf; other sections
/// are skipped. One keyword per line, as multipath itself requires.
fn parse_multipath_conf(file: &Path, text: &str) -> Result<Vec<Alias>, ConfigError> {
    let mut out = vec![];
    // Section nesting: names of the open sections.
    let mut stack: Vec<(String, usize)> = vec![];
    let mut cur: Option<(usize, Option<String>, Option<String>)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_suffix('{') {
            let name = name.trim().to_string();
            if stack.last().map(|(s, _)| s.as_str()) == Some("multipaths") && name == "multipath" {
                cur = Some((n, None, None));
            }
            if stack.len() >= 16 {
                return Err(ConfigError::at_line(file, n, "sections nested more than 16 deep"));
            }
            stack.push((name, n));
            continue;
        }
        if line == "}" {
            if stack.pop().is_none() {
                return Err(ConfigError::at_line(file, n, "unbalanced '}'"));
            }
            if stack.last().map(|(s, _)| s.as_str()) == Some("multipaths") {
                if let Some((start, wwid, alias)) = cur.take() {
                    match (wwid, alias) {
                        (Some(w), Some(a)) => out.push(Alias { alias: a, wwid: w, paths: None, line: start }),
                        (None, _) => return Err(ConfigError::at_line(file, start, "multipath section without a wwid")),
                        (Some(w), None) => {
                            return Err(ConfigError::at_line(
                                file,
                                start,
                                format!("multipath section for {w} without an alias"),
                            ))
                        }
                    }
                }
            }
            continue;
        }
        if line.contains('{') || line.contains('}') {
            return Err(ConfigError::at_line(
                file,
                n,
                "one keyword per line: multipath misreads sections squeezed onto one line",
            ));
        }
        if let Some((_, wwid, alias)) = cur.as_mut() {
            let mut words = line.splitn(2, char::is_whitespace);
            let key = words.next().unwrap_or("");
            let value = words.next().unwrap_or("").trim().trim_matches('"').to_string();
            match key {
                "wwid" => *wwid = Some(value),
                "alias" => *alias = Some(value),
                _ => {}
            }
        }
    }
    if let Some((name, opened)) = stack.last() {
        return Err(ConfigError::at_line(file, *opened, format!("section {:?} is not closed", shorten(name, 40))));
    }
    Ok(out)
}

/// Parses an alias file in whichever format it is in, and validates it.
pub fn parse(file: &Path, text: &str) -> Result<(Format, Vec<Alias>), ConfigError> {
    let format = detect(text);
    let mut aliases = match format {
        Format::Toml => parse_toml(file, text)?,
        Format::Bindings => parse_bindings(file, text)?,
        Format::MultipathConf => parse_multipath_conf(file, text)?,
    };
    validate(file, &mut aliases)?;
    Ok((format, aliases))
}

/// Names, WWIDs, duplicates, emptiness. Normalises WWIDs in place.
pub fn validate(file: &Path, aliases: &mut [Alias]) -> Result<(), ConfigError> {
    if aliases.is_empty() {
        return Err(ConfigError::new(file, "no aliases defined: an empty alias file would remove every map"));
    }
    let mut by_alias: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_wwid: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for a in aliases.iter_mut() {
        if !valid_alias(&a.alias) {
            return Err(ConfigError::at_line(
                file,
                a.line,
                format!(
                    "{:?} cannot be a device-mapper name: use 1-127 of [A-Za-z0-9-_.+], not starting with '-' or '.'",
                    a.alias
                ),
            ));
        }
        if !valid_wwid(&a.wwid) {
            return Err(ConfigError::at_line(file, a.line, format!("alias {}: {:?} is not a WWID", a.alias, a.wwid)));
        }
        a.wwid = normalise_wwid(&a.wwid);
        if let Some(first) = by_alias.insert(a.alias.clone(), a.line) {
            return Err(ConfigError::at_line(
                file,
                a.line,
                format!("alias {} is defined twice (first on line {first})", a.alias),
            ));
        }
        if let Some((other, first)) = by_wwid.insert(a.wwid.clone(), (a.alias.clone(), a.line)) {
            return Err(ConfigError::at_line(
                file,
                a.line,
                format!("WWID {} is given two aliases: {other} (line {first}) and {}", a.wwid, a.alias),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<(Format, Vec<Alias>), String> {
        parse(Path::new("aliases"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn toml_gives_aliases_with_path_counts() {
        let (f, a) = p(
            "[aliases]\nvm1 = { wwid = \"35000C50015EA71AC\", paths = 2 }\nldap = { wwid = \"naa.600a0b80001234\" }\n",
        )
        .unwrap();
        assert_eq!(f, Format::Toml);
        assert_eq!(a[0], Alias { alias: "vm1".into(), wwid: "35000c50015ea71ac".into(), paths: Some(2), line: 2 });
        assert_eq!(a[1].wwid, "3600a0b80001234");
        assert_eq!(a[1].paths, None);
    }

    #[test]
    fn bindings_files_are_read_as_multipath_writes_them() {
        let text =
            "# Multipath bindings, Version : 1.0\n# comment\nvm1 3600a0b800011\n\nvm_test 3600a0b800022  # trailing\n";
        let (f, a) = p(text).unwrap();
        assert_eq!(f, Format::Bindings);
        assert_eq!(a.iter().map(|a| (a.alias.as_str(), a.line)).collect::<Vec<_>>(), vec![("vm1", 3), ("vm_test", 5)]);
    }

    #[test]
    fn the_multipaths_section_of_a_multipath_conf_is_read() {
        let text = r#"
defaults {
        user_friendly_names yes
}
blacklist {
        devnode "*"
}
multipaths {
        multipath {
                wwid            Vendor_FF01000033100100
                alias           vm1
        }
        multipath {
                wwid "3600a0b80001111"
                alias vm_test
        }
}
"#;
        let (f, a) = p(text).unwrap();
        assert_eq!(f, Format::MultipathConf);
        assert_eq!(a[0], Alias { alias: "vm1".into(), wwid: "Vendor_FF01000033100100".into(), paths: None, line: 9 });
        assert_eq!(a[1].alias, "vm_test");
        assert_eq!(a[1].wwid, "3600a0b80001111");
    }

    #[test]
    fn every_validation_error_names_the_line() {
        assert_eq!(p("vm1 3600a\nvm1 3600b\n").unwrap_err(), "aliases:2: alias vm1 is defined twice (first on line 1)");
        assert_eq!(
            p("vm1 3600a\nvm2 3600A\n").unwrap_err(),
            "aliases:2: WWID 3600a is given two aliases: vm1 (line 1) and vm2"
        );
        assert!(p("vm/1 3600a\n").unwrap_err().starts_with("aliases:1: \"vm/1\" cannot be a device-mapper name"));
        assert!(p("-vm 3600a\n").unwrap_err().starts_with("aliases:1: \"-vm\" cannot be a device-mapper name"));
        assert_eq!(
            p("vm1\n").unwrap_err(),
            "aliases:1: expected \"<alias> <wwid>\" (a multipath bindings line), found \"vm1\""
        );
        assert_eq!(p("").unwrap_err(), "aliases: no aliases defined: an empty alias file would remove every map");
        assert_eq!(
            p("# only comments\n").unwrap_err(),
            "aliases: no aliases defined: an empty alias file would remove every map"
        );
        assert_eq!(
            p("[aliases]\nvm1 = { wwid = \"3600a\", paths = 0 }\n").unwrap_err(),
            "aliases:2: alias vm1: paths must be 1-64"
        );
        assert!(p("[aliases]\nvm1 = { wwid = \"3600a\", path = 2 }\n").unwrap_err().contains("unknown field `path`"));
        assert!(p("[aliases]\nvm1 = { wwid = \"36 00\" }\n").unwrap_err().contains("is not a WWID"));
    }

    #[test]
    fn malformed_multipath_conf_is_refused() {
        let e = p("multipaths {\n multipath { wwid 3600a alias vm1 }\n}\n").unwrap_err();
        assert!(e.starts_with("aliases:2: one keyword per line"), "{e}");
        let e = p("multipaths {\n multipath {\n  alias vm1\n }\n}\n").unwrap_err();
        assert_eq!(e, "aliases:2: multipath section without a wwid");
        let e = p("multipaths {\n multipath {\n  wwid 3600a\n }\n}\n").unwrap_err();
        assert_eq!(e, "aliases:2: multipath section for 3600a without an alias");
        let e = p("multipaths {\n multipath {\n  wwid 3600a\n  alias vm1\n }\n").unwrap_err();
        assert!(e.contains("is not closed"), "{e}");
        let e = p("multipaths {\n}\n}\n").unwrap_err();
        assert_eq!(e, "aliases:3: unbalanced '}'");
    }
}
