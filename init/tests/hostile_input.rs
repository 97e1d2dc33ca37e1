//! Property tests: whatever a file, a fetched URL, the kernel command line or an API client
//! sends, the parsers and the router answer with a value or a refusal, never a panic; and a
//! refused configuration says on which line.

use std::path::Path;

use proptest::prelude::*;

use bladevisor::config::cluster::parse_cluster;
use bladevisor::proto::routes::route;
use bladevisor::storage::aliases;

/// A cluster configuration that parses, with one placeholder `@V@` where a hostile value goes.
const TEMPLATES: &[&str] = &[
    "[cluster]\nname = \"lab\"\ntoken = @V@\n",
    "[cluster]\nname = \"lab\"\n[storage]\nwait-s = @V@\n",
    "[cluster]\nname = \"lab\"\n[storage]\nlip-timeout-s = @V@\n",
    "[cluster]\nname = \"lab\"\n[storage]\ndefault-paths = @V@\n",
    "[cluster]\nname = \"lab\"\n[migration]\ntimeout-s = @V@\n",
    "[cluster]\nname = \"lab\"\n[migration]\nconverge-after-s = @V@\n",
    "[cluster]\nname = \"lab\"\n[migration]\nmax-bandwidth-mbps = @V@\n",
    "[cluster]\nname = \"lab\"\n[migration]\nparallel = @V@\n",
    "[cluster]\nname = \"lab\"\n[migration]\nports = @V@\n",
    "[cluster]\nname = \"lab\"\n[migration]\nmax-downtime-ms = @V@\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\nmacs = [@V@]\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\nmacs = [\"52:54:00:00:00:01\"]\nmanagement = { address = @V@ }\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\n[bridges.br0]\nuplink = \"eth1\"\n[guests.g]\nnode = \"b1\"\nmemory-mib = 64\nstop-timeout-s = @V@\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\n[guests.g]\nnode = \"b1\"\nmemory-mib = @V@\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\n[guests.g]\nnode = \"b1\"\nmemory-mib = 64\nvcpus = @V@\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\n[guests.g]\nnode = \"b1\"\nmemory-mib = 64\ncpu = @V@\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\n[guests.g]\nnode = \"b1\"\nmemory-mib = 64\nmachine = @V@\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\n[bridges.br0]\n[guests.g]\nnode = \"b1\"\nmemory-mib = 64\nnics = [{ bridge = \"br0\", mac = \"52:54:00:00:00:02\", model = @V@ }]\n",
    "[cluster]\nname = \"lab\"\n[nodes.b1]\n[guests.g]\nnode = \"b1\"\nmemory-mib = 64\ndisks = [{ alias = @V@ }]\n",
    "[cluster]\nname = \"lab\"\n[aliases]\nvm1 = { wwid = @V@, paths = 2 }\n",
    "[cluster]\nname = \"lab\"\n[aliases]\nvm1 = { wwid = \"35000c50015ea71ac\", paths = @V@ }\n",
];

/// Values an attacker or a typo would put there.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("1e308".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("18446744073709551615".to_string()),
        Just("\"\"".to_string()),
        Just("\"virtio-net-pci,romfile=/run/bladevisor/cluster.toml\"".to_string()),
        Just("\"a b\"".to_string()),
        Just("\"../../etc/passwd\"".to_string()),
        Just("\"\u{e9}t\u{e9}-token-with-accents\"".to_string()),
        Just(format!("\"{}\"", "x".repeat(5000))),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[a-z0-9.,:=/ -]{0,40}".prop_map(|s| format!("{s:?}")),
    ]
}

fn refusal_names_a_line(text: &str, r: Result<(), bladevisor::config::ConfigError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(e.line.is_some(), "no line in {e} for:\n{}", text.chars().take(300).collect::<String>());
        prop_assert!(e.to_string().len() < 2000, "an unbounded message: {}", e.to_string().len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_a_cluster_configuration_is_parsed_or_refused(text in "\\PC{0,400}") {
        let _ = parse_cluster(Path::new("cluster.toml"), &text);
    }

    #[test]
    fn a_hostile_value_in_any_key_is_accepted_sanely_or_refused_with_its_line(
        template in proptest::sample::select(TEMPLATES),
        value in hostile_value(),
    ) {
        let text = template.replace("@V@", &value);
        let r = parse_cluster(Path::new("cluster.toml"), &text).map(|c| {
            // What was accepted is usable: no value that turns into a panic downstream.
            for g in c.guests.values() {
                let _ = bladevisor::config::values::secs(g.stop_timeout_s);
                let argv = bladevisor::qemu::argv(g, Path::new("/run/bladevisor"), false);
                for a in &argv[1..] {
                    assert!(!a.contains("romfile"), "{a}");
                }
            }
            let _ = bladevisor::config::values::secs(c.storage.wait_s);
            let _ = bladevisor::config::values::secs(c.migration.timeout_s);
        });
        refusal_names_a_line(&text, r)?;
    }

    #[test]
    fn any_alias_file_is_parsed_or_refused(text in "\\PC{0,400}") {
        let _ = aliases::parse(Path::new("aliases"), &text);
    }

    #[test]
    fn alias_files_in_every_format_refuse_with_a_line(
        alias in "[a-zA-Z0-9._-]{0,8}|\\PC{0,8}",
        wwid in "[0-9a-f]{0,20}|\\PC{0,8}",
        format in 0..3usize,
    ) {
        let text = match format {
            0 => format!("[aliases]\n{alias:?} = {{ wwid = {wwid:?} }}\n"),
            1 => format!("# bindings\n{alias} {wwid}\n"),
            _ => format!("multipaths {{\n  multipath {{\n    wwid {wwid}\n    alias {alias}\n  }}\n}}\n"),
        };
        let r = aliases::parse(Path::new("aliases"), &text).map(|_| ());
        if let Err(e) = &r {
            // An empty table is a whole-file refusal; everything else is on a line.
            prop_assume!(!e.message.starts_with("no aliases defined"));
        }
        refusal_names_a_line(&text, r)?;
    }

    #[test]
    fn any_kernel_command_line_is_parsed(line in "\\PC{0,300}") {
        let k = bladevisor::cmdline::parse(&line);
        prop_assert!(k.unknown.len() <= line.len());
    }

    #[test]
    fn any_request_line_is_routed_or_refused(
        method in prop_oneof![
            Just("GET".to_string()),
            Just("POST".to_string()),
            Just("PUT".to_string()),
            "[A-Z]{0,8}",
        ],
        path in "(/[a-z0-9?&=.%-]{0,12}){0,6}|\\PC{0,80}",
    ) {
        // Whatever routes is exactly what its own URL routes back to.
        if let Ok(r) = route(&method, &path) {
            prop_assert_eq!(r.method(), method.as_str());
            prop_assert_eq!(route(r.method(), &r.target()), Ok(r));
        }
    }
}
