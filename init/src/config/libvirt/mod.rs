//! `bladevisor import-libvirt`: a libvirt domain (the XML `virsh dumpxml`, virt-install and
//! virt-manager write) as the `[guests.<name>]` section of the cluster configuration, with what
//! could not be carried over said plainly. The section is checked with the code a blade checks
//! its configuration with before it is printed.

use std::collections::BTreeMap;
use std::path::Path;

use super::aliases::{normalise_wwid, valid_alias, Alias};
use super::guest::{validate, GuestSpec};

/// One domain, imported.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub name: String,
    /// The `[guests.<name>]` section, ready to paste.
    pub toml: String,
    /// What was left out or changed, and why: one line each.
    pub notes: Vec<String>,
}

/// The machine types this image's QEMU (7.2) has: a newer one cannot run here.
const QEMU_VERSION: (u32, u32) = (7, 2);

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

fn text<'a>(n: Option<roxmltree::Node<'a, '_>>) -> Option<&'a str> {
    n.and_then(|n| n.text()).map(str::trim).filter(|t| !t.is_empty())
}

/// A libvirt memory size in MiB (rounded up), from its value and `unit` (KiB by default).
fn mib(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let v: u64 = value.trim().parse().map_err(|_| format!("memory {value:?} is not a whole number"))?;
    let bytes_per: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        u => return Err(format!("memory unit {u:?} is not one libvirt writes")),
    };
    let bytes = v.checked_mul(bytes_per).ok_or_else(|| format!("memory {value} {bytes_per} is too large"))?;
    Ok(bytes.div_ceil(1 << 20))
}

/// The machine type for this image's QEMU, and a note when it had to change.
fn machine(m: Option<&str>) -> (String, Option<String>) {
    let pinned = |family: &str| format!("pc-{family}-{}.{}", QEMU_VERSION.0, QEMU_VERSION.1);
    let Some(m) = m else { return (pinned("q35"), None) };
    let family = if m.contains("i440fx") || m == "pc" { "i440fx" } else { "q35" };
    let version = m.rsplit('-').next().and_then(|v| {
        let (a, b) = v.split_once('.')?;
        Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
    });
    match version {
        Some(v) if v <= QEMU_VERSION && m.starts_with("pc-") => (m.to_string(), None),
        Some(_) => (
            pinned(family),
            Some(format!(
                "machine {m} is newer than this image's QEMU {}.{}: {} used (the guest sees slightly older virtual hardware)",
                QEMU_VERSION.0,
                QEMU_VERSION.1,
                pinned(family)
            )),
        ),
        None => (
            pinned(family),
            Some(format!("machine {m} is not pinned to a version (live migration needs one): {} used", pinned(family))),
        ),
    }
}

/// The alias of a disk's block device: `/dev/mapper/<alias>`, or a multipath or SCSI WWID
/// found in the alias table.
fn disk_alias(dev: &str, aliases: &[Alias]) -> Result<String, String> {
    if let Some(a) = dev.strip_prefix("/dev/mapper/") {
        return if valid_alias(a) { Ok(a.to_string()) } else { Err(format!("{dev}: {a:?} is not an alias")) };
    }
    let wwid = ["/dev/disk/by-id/dm-uuid-mpath-", "/dev/disk/by-id/scsi-"]
        .iter()
        .find_map(|p| dev.strip_prefix(p).map(normalise_wwid))
        .or_else(|| dev.strip_prefix("/dev/disk/by-id/wwn-0x").map(|h| format!("3{}", h.to_ascii_lowercase())));
    let Some(wwid) = wwid else {
        return Err(format!("{dev} is not a SAN LUN (/dev/mapper/<alias> or a WWID): copy it onto a LUN"));
    };
    match aliases.iter().find(|a| normalise_wwid(&a.wwid) == wwid) {
        Some(a) => Ok(a.alias.clone()),
        None => Err(format!("{dev}: WWID {wwid} has no alias in the alias table (give it one, or --aliases <file>)")),
    }
}

const NIC_MODELS: &[(&str, &str)] = &[
    ("virtio", "virtio-net-pci"),
    ("e1000", "e1000"),
    ("e1000e", "e1000e"),
    ("rtl8139", "rtl8139"),
    ("vmxnet3", "vmxnet3"),
];

/// Devices a blade gives every guest its own way (or that need nothing): left out silently.
const IMPLIED: &[&str] = &["emulator", "controller", "serial", "console", "input", "memballoon", "disk", "interface"];

/// Imports one domain from `xml` (`source` names it in messages) for blade `node`.
pub fn import(source: &str, xml: &str, node: &str, aliases: &[Alias]) -> Result<Imported, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("{source}: not XML ({e})"))?;
    let dom = doc.root_element();
    if !dom.has_tag_name("domain") {
        return Err(format!("{source}: not a libvirt domain (<{}>)", dom.tag_name().name()));
    }
    let name = text(child(dom, "name")).ok_or_else(|| format!("{source}: the domain has no <name>"))?;
    let mut notes = vec![];
    let mem = child(dom, "memory").ok_or_else(|| format!("{source}: domain {name} has no <memory>"))?;
    let memory = mib(mem.text().unwrap_or(""), mem.attribute("unit")).map_err(|e| format!("{source}: {e}"))?;
    if let Some(cur) = child(dom, "currentMemory") {
        if mib(cur.text().unwrap_or(""), cur.attribute("unit")).is_ok_and(|c| c < memory) {
            notes.push(format!("currentMemory below memory (ballooned): the guest gets all {memory} MiB"));
        }
    }
    let vcpu = child(dom, "vcpu");
    let max: u32 = text(vcpu).and_then(|v| v.parse().ok()).unwrap_or(1);
    let vcpus = match vcpu.and_then(|v| v.attribute("current")).and_then(|c| c.parse::<u32>().ok()) {
        Some(cur) if cur < max => {
            notes.push(format!("vcpu current {cur} of {max}: {cur} given (no CPU hot-plug here)"));
            cur
        }
        _ => max,
    };
    let (machine, note) =
        machine(child(dom, "os").and_then(|os| child(os, "type")).and_then(|t| t.attribute("machine")));
    notes.extend(note);
    let cpu_el = child(dom, "cpu");
    let cpu = match cpu_el.and_then(|c| c.attribute("mode")).unwrap_or("custom") {
        "custom" => text(cpu_el.and_then(|c| child(c, "model"))).map(String::from),
        mode => {
            notes.push(format!(
                "cpu mode {mode}: a guest that live-migrates needs a pinned model the same on every blade; qemu64 \
                 used: set cpu to the oldest model your blades share"
            ));
            None
        }
    };
    let mut disks = vec![];
    let mut nics = vec![];
    let devices = child(dom, "devices");
    for d in devices.iter().flat_map(|d| d.children()).filter(|c| c.has_tag_name("disk")) {
        let target = child(d, "target").and_then(|t| t.attribute("dev")).unwrap_or("?");
        let kind = d.attribute("device").unwrap_or("disk");
        let source = child(d, "source");
        let path = source.and_then(|s| s.attribute("dev").or(s.attribute("file"))).unwrap_or("(no source)");
        if kind != "disk" {
            notes.push(format!("disk {target}: a {kind} ({path}) is not carried over"));
            continue;
        }
        let dev = match (d.attribute("type"), source.and_then(|s| s.attribute("dev"))) {
            (Some("block"), Some(dev)) => dev,
            _ => {
                notes.push(format!("disk {target}: {path} is not a block device: copy it onto a LUN"));
                continue;
            }
        };
        let alias = match disk_alias(dev, aliases) {
            Ok(a) => a,
            Err(e) => {
                notes.push(format!("disk {target}: {e}"));
                continue;
            }
        };
        let driver = child(d, "driver");
        let cache = driver.and_then(|x| x.attribute("cache")).unwrap_or("none");
        if cache != "none" {
            notes.push(format!("disk {target}: cache {cache} is not safe on a LUN shared by blades: cache none used"));
        }
        let aio = driver
            .and_then(|x| x.attribute("io"))
            .filter(|io| ["native", "threads", "io_uring"].contains(io))
            .unwrap_or("native");
        let bus = child(d, "target").and_then(|t| t.attribute("bus")).unwrap_or("virtio");
        if bus != "virtio" {
            notes.push(format!("disk {target}: bus {bus}: attached as virtio-blk here (the guest needs its driver)"));
        }
        disks.push(format!("  {{ alias = \"{alias}\", cache = \"none\", aio = \"{aio}\" }},\n"));
    }
    for i in devices.iter().flat_map(|d| d.children()).filter(|c| c.has_tag_name("interface")) {
        let mac = child(i, "mac").and_then(|m| m.attribute("address")).unwrap_or("");
        let bridge = match (i.attribute("type"), child(i, "source")) {
            (Some("bridge"), Some(s)) => s.attribute("bridge"),
            _ => None,
        };
        let Some(bridge) = bridge else {
            let what = i.attribute("type").unwrap_or("?");
            let src = child(i, "source").and_then(|s| s.attributes().next().map(|a| a.value())).unwrap_or("?");
            notes.push(format!("interface {mac}: type {what} ({src}) is not a bridge: give it one of [bridges]"));
            continue;
        };
        let model = child(i, "model").and_then(|m| m.attribute("type")).unwrap_or("virtio");
        let Some((_, ours)) = NIC_MODELS.iter().find(|(l, _)| *l == model) else {
            notes.push(format!("interface {mac}: model {model} is not one a blade offers: virtio-net-pci used"));
            nics.push(format!("  {{ bridge = \"{bridge}\", mac = \"{mac}\", model = \"virtio-net-pci\" }},\n"));
            continue;
        };
        nics.push(format!("  {{ bridge = \"{bridge}\", mac = \"{mac}\", model = \"{ours}\" }},\n"));
    }
    for d in devices.iter().flat_map(|d| d.children()).filter(|c| c.is_element()) {
        let tag = d.tag_name().name();
        if !IMPLIED.contains(&tag) {
            let kind = d.attribute("type").or(d.attribute("model")).map(|t| format!(" {t}")).unwrap_or_default();
            notes.push(format!("{tag}{kind}: not carried over (a blade's guests are headless: bladevisor console)"));
        }
    }
    let mut toml = format!("[guests.{name}]\nnode = \"{node}\"\nmemory-mib = {memory}\nvcpus = {vcpus}\n");
    if let Some(c) = cpu {
        toml.push_str(&format!("cpu = \"{c}\"\n"));
    }
    toml.push_str(&format!("machine = \"{machine}\"\n"));
    if !disks.is_empty() {
        toml.push_str(&format!("disks = [\n{}]\n", disks.concat()));
    }
    if !nics.is_empty() {
        toml.push_str(&format!("nics = [\n{}]\n", nics.concat()));
    }
    check(source, name, node, &toml, aliases)?;
    Ok(Imported { name: name.to_string(), toml, notes })
}

/// Checks the section as a blade checks its configuration (the aliases it names must be in the
/// table, when one was given).
fn check(source: &str, name: &str, node: &str, toml: &str, aliases: &[Alias]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Only {
        guests: BTreeMap<String, GuestSpec>,
    }
    let mut g = toml::from_str::<Only>(toml).map_err(|e| format!("{source}: domain {name}: {}", e.message()))?.guests;
    let names: Vec<String> = aliases.iter().map(|a| a.alias.clone()).collect();
    let known = (!aliases.is_empty()).then_some(names.as_slice());
    validate(Path::new(source), toml, &mut g, &[node.to_string()], known).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
