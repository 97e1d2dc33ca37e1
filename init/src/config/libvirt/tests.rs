use super::*;

const WEB: &str = include_str!("../../../tests/fixtures/libvirt/web.xml");
const DB: &str = include_str!("../../../tests/fixtures/libvirt/db.xml");

/// Every one of `expected` is among the notes.
fn has_notes(notes: &[String], expected: &[&str]) {
    let all = notes.join("\n");
    for e in expected {
        assert!(all.contains(e), "{e:?} missing from:\n{all}");
    }
}

fn table() -> Vec<Alias> {
    let text = "[aliases]\nweb-root = { wwid = \"3600a0b800050c1f2000012345678ffff\" }\n\
                web-data = { wwid = \"3600a0b800050c1f2000012345678abcd\" }\n\
                db-data = { wwid = \"3600a0b800050c1f20000aaaa00000001\" }\n";
    crate::config::aliases::parse(Path::new("aliases.toml"), text).unwrap().1
}

#[test]
fn a_virt_install_domain_becomes_a_guest_section_and_says_what_it_left_out() {
    let i = import("web.xml", WEB, "blade1", &table()).unwrap();
    assert_eq!(i.name, "web");
    assert_eq!(
        i.toml,
        "[guests.web]\nnode = \"blade1\"\nmemory-mib = 4096\nvcpus = 4\ncpu = \"Cascadelake-Server-noTSX\"\n\
         machine = \"pc-q35-7.2\"\ndisks = [\n  { alias = \"web-root\", cache = \"none\", aio = \"native\" },\n  \
         { alias = \"web-data\", cache = \"none\", aio = \"native\" },\n]\n\
         nics = [\n  { bridge = \"br0\", mac = \"52:54:00:6c:3e:01\", model = \"virtio-net-pci\" },\n]\n"
    );
    has_notes(
        &i.notes,
        &[
            "disk sda: a cdrom (/var/lib/libvirt/images/debian-12.iso) is not carried over",
            "interface 52:54:00:6c:3e:02: type network (default) is not a bridge",
            "channel unix: not carried over",
            "graphics spice: not carried over",
            "video: not carried over",
            "rng virtio: not carried over",
        ],
    );
    assert_eq!(i.notes.len(), 6, "{:?}", i.notes);
}

#[test]
fn what_a_blade_cannot_run_as_written_is_changed_and_said() {
    let i = import("db.xml", DB, "blade2", &table()).unwrap();
    assert!(i.toml.contains("memory-mib = 8192\nvcpus = 2\nmachine = \"pc-q35-7.2\"\n"), "{}", i.toml);
    assert!(i.toml.contains("{ alias = \"db-data\", cache = \"none\", aio = \"native\" }"), "{}", i.toml);
    assert!(i.toml.contains("model = \"rtl8139\""), "{}", i.toml);
    has_notes(
        &i.notes,
        &[
            "vcpu current 2 of 8: 2 given",
            "machine pc-q35-8.2 is newer than this image's QEMU 7.2: pc-q35-7.2 used",
            "cpu mode host-passthrough: a guest that live-migrates needs a pinned model",
            "disk sda: cache writeback is not safe on a LUN shared by blades: cache none used",
            "disk sda: bus scsi: attached as virtio-blk here",
            "disk vdc: /var/lib/libvirt/images/db-scratch.qcow2 is not a block device: copy it onto a LUN",
        ],
    );
    // Without the alias table a WWID cannot be named.
    let i = import("db.xml", DB, "blade2", &[]).unwrap();
    assert!(i.notes.iter().any(|n| n.contains("WWID 3600a0b800050c1f20000aaaa00000001 has no alias")), "{:?}", i.notes);
}

#[test]
fn what_is_not_a_domain_or_not_valid_here_is_refused_naming_the_file() {
    assert!(import("x.xml", "<domain>", "blade1", &[]).unwrap_err().starts_with("x.xml: not XML"));
    let e = import("x.xml", "<network><name>default</name></network>", "blade1", &[]).unwrap_err();
    assert_eq!(e, "x.xml: not a libvirt domain (<network>)");
    let e = import("x.xml", "<domain><name>x</name></domain>", "blade1", &[]).unwrap_err();
    assert_eq!(e, "x.xml: domain x has no <memory>");
    let bad_name = WEB.replace("<name>web</name>", "<name>web server</name>");
    let e = import("web.xml", &bad_name, "blade1", &table()).unwrap_err();
    assert!(e.starts_with("web.xml") && e.contains("web server"), "{e}");
    let bad_mac = WEB.replace("52:54:00:6c:3e:01", "not-a-mac");
    let e = import("web.xml", &bad_mac, "blade1", &table()).unwrap_err();
    assert!(e.contains("not-a-mac"), "{e}");
    assert_eq!(mib("4", Some("GiB")), Ok(4096));
    assert_eq!(mib("1000000", Some("KB")), Ok(954));
    assert!(mib("18446744073709551615", Some("TiB")).unwrap_err().contains("too large"));
}
