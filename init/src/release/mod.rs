//! Releases: the manifest `image/build` writes beside each image (what is inside, each
//! artifact's SHA-256), and what changed between two of them (`bladevisor manifest-diff`), read
//! before a release is rolled out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod upgrade;

/// The most a manifest file may be (one is about 30 KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// `bladevisor.manifest`, the parts release tooling reads. Unknown fields are kept out, missing
/// ones (a manifest of an older release) are empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kernel_package: Option<String>,
    #[serde(default)]
    pub packages: Vec<Package>,
    #[serde(default)]
    pub artifacts: BTreeMap<String, Artifact>,
    #[serde(default)]
    pub root: Option<Root>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Root {
    #[serde(default)]
    pub compressed_bytes: u64,
    #[serde(default)]
    pub unpacked_bytes: u64,
}

/// Reads a manifest (at most [`MAX_MANIFEST_BYTES`]), naming the file on any error.
pub fn read_manifest(path: &std::path::Path) -> Result<Manifest, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!("{}: larger than {MAX_MANIFEST_BYTES} bytes: not a manifest", path.display()));
    }
    parse_manifest(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a manifest's text.
pub fn parse_manifest(text: &str) -> Result<Manifest, String> {
    serde_json::from_str(text).map_err(|e| format!("not a bladevisor manifest: {e}"))
}

/// What changed from one release to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestDiff {
    pub version: (String, String),
    pub kernel: Option<(Option<String>, Option<String>)>,
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    /// (name, old version, new version)
    pub changed: Vec<(String, String, String)>,
    /// Artifacts whose bytes differ (by SHA-256), and those only one side has.
    pub artifacts_changed: Vec<String>,
    /// Compressed root image size, old and new.
    pub root_bytes: Option<(u64, u64)>,
}

/// Compares two manifests.
pub fn diff(old: &Manifest, new: &Manifest) -> ManifestDiff {
    let by_name = |m: &Manifest| -> BTreeMap<String, String> {
        m.packages.iter().map(|p| (p.name.clone(), p.version.clone())).collect()
    };
    let (a, b) = (by_name(old), by_name(new));
    let pkg = |(n, v): (&String, &String)| Package { name: n.clone(), version: v.clone() };
    let mut names: Vec<&String> = old.artifacts.keys().chain(new.artifacts.keys()).collect();
    names.sort();
    names.dedup();
    ManifestDiff {
        version: (old.version.clone(), new.version.clone()),
        kernel: (old.kernel_package != new.kernel_package)
            .then(|| (old.kernel_package.clone(), new.kernel_package.clone())),
        added: b.iter().filter(|(n, _)| !a.contains_key(*n)).map(pkg).collect(),
        removed: a.iter().filter(|(n, _)| !b.contains_key(*n)).map(pkg).collect(),
        changed: a
            .iter()
            .filter_map(|(n, v)| b.get(n).filter(|w| *w != v).map(|w| (n.clone(), v.clone(), w.clone())))
            .collect(),
        artifacts_changed: names
            .into_iter()
            .filter(|n| old.artifacts.get(*n).map(|x| &x.sha256) != new.artifacts.get(*n).map(|x| &x.sha256))
            .cloned()
            .collect(),
        root_bytes: old.root.as_ref().zip(new.root.as_ref()).map(|(o, n)| (o.compressed_bytes, n.compressed_bytes)),
    }
}

/// The diff for an operator, one line per change.
pub fn render(d: &ManifestDiff) -> String {
    let mut s = format!("version  {} -> {}\n", d.version.0, d.version.1);
    if let Some((o, n)) = &d.kernel {
        s += &format!("kernel   {} -> {}\n", o.as_deref().unwrap_or("?"), n.as_deref().unwrap_or("?"));
    }
    for p in &d.added {
        s += &format!("added    {} {}\n", p.name, p.version);
    }
    for p in &d.removed {
        s += &format!("removed  {} {}\n", p.name, p.version);
    }
    for (n, o, v) in &d.changed {
        s += &format!("changed  {n} {o} -> {v}\n");
    }
    if let Some((o, n)) = d.root_bytes {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        s += &format!("root     {:.1} MiB -> {:.1} MiB compressed\n", mib(o), mib(n));
    }
    if d.artifacts_changed.is_empty() {
        s += "artifacts identical (same SHA-256)\n";
    } else {
        s += &format!("artifacts differ: {}\n", d.artifacts_changed.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str, kernel: &str, pkgs: &[(&str, &str)], initrd_sha: &str) -> Manifest {
        Manifest {
            version: version.into(),
            kernel_package: Some(kernel.into()),
            packages: pkgs.iter().map(|(n, v)| Package { name: n.to_string(), version: v.to_string() }).collect(),
            artifacts: [("bladevisor.initrd".to_string(), Artifact { sha256: initrd_sha.into(), bytes: 1 })].into(),
            root: Some(Root { compressed_bytes: 1 << 20, unpacked_bytes: 4 << 20 }),
        }
    }

    #[test]
    fn packages_added_removed_and_changed_are_each_named() {
        let old = manifest("1.0", "6.1.0-56", &[("qemu", "7.2"), ("perl-base", "5.36"), ("udev", "252")], "aa");
        let new = manifest("1.1", "6.1.0-57", &[("qemu", "7.2.1"), ("udev", "252"), ("sanlock", "3.8")], "bb");
        let d = diff(&old, &new);
        assert_eq!(d.version, ("1.0".into(), "1.1".into()));
        assert_eq!(d.kernel, Some((Some("6.1.0-56".into()), Some("6.1.0-57".into()))));
        assert_eq!(d.added, [Package { name: "sanlock".into(), version: "3.8".into() }]);
        assert_eq!(d.removed, [Package { name: "perl-base".into(), version: "5.36".into() }]);
        assert_eq!(d.changed, [("qemu".into(), "7.2".into(), "7.2.1".into())]);
        assert_eq!(d.artifacts_changed, ["bladevisor.initrd"]);
        let text = render(&d);
        for line in
            ["version  1.0 -> 1.1", "added    sanlock 3.8", "removed  perl-base 5.36", "changed  qemu 7.2 -> 7.2.1"]
        {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn two_builds_of_one_commit_differ_in_nothing() {
        let m = manifest("1.0", "k", &[("qemu", "7.2")], "aa");
        let d = diff(&m, &m);
        assert!(d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty() && d.kernel.is_none());
        assert!(render(&d).contains("artifacts identical"), "{}", render(&d));
    }

    #[test]
    fn a_manifest_of_an_older_release_still_reads_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.manifest");
        std::fs::write(&old, r#"{"image": "bladevisor", "version": "0.9", "packages": [{"name": "qemu", "version": "7.2", "architecture": "amd64"}]}"#).unwrap();
        let m = read_manifest(&old).unwrap();
        assert_eq!((m.version.as_str(), m.packages.len(), m.artifacts.len()), ("0.9", 1, 0));
        let bad = dir.path().join("bad.manifest");
        std::fs::write(&bad, "not json").unwrap();
        assert!(read_manifest(&bad).unwrap_err().contains("bad.manifest: not a bladevisor manifest"));
    }
}
