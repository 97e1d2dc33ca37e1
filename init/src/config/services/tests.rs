use super::*;

fn parse(text: &str) -> Result<Vec<ServiceSpec>, String> {
    parse_services(Path::new("image.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn a_full_service_table_parses_with_defaults() {
    let s = parse(
        r#"
[services.udevd]
argv = ["/lib/systemd/systemd-udevd"]
ready = { path = "/run/udev/control" }

[services.multipathd]
argv = ["/sbin/multipathd", "-d", "-s"]
after = ["udevd"]
restart = "on-failure"
backoff = { initial-s = 1, max-s = 8, give-up-after = 3 }
env = { LANG = "C" }
stop-timeout-s = 5
"#,
    )
    .unwrap();
    assert_eq!(s.len(), 2);
    let m = s.iter().find(|s| s.name == "multipathd").unwrap();
    assert_eq!(m.after, vec!["udevd"]);
    assert_eq!(m.restart, RestartPolicy::OnFailure);
    assert_eq!(m.backoff.give_up_after, 3);
    assert_eq!(m.backoff.factor, 2.0);
    assert_eq!(m.env["LANG"], "C");
    let u = s.iter().find(|s| s.name == "udevd").unwrap();
    assert_eq!(u.restart, RestartPolicy::Always);
    assert_eq!(u.ready.path.as_deref(), Some("/run/udev/control"));
    assert!(u.enabled);
}

#[test]
fn an_empty_file_means_no_services() {
    assert_eq!(parse("").unwrap(), vec![]);
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nrestrat = \"always\"\n").unwrap_err();
    assert!(e.starts_with("image.toml:3:1: unknown field `restrat`"), "{e}");
}

#[test]
fn unknown_top_level_tables_are_errors() {
    let e = parse("[servics.a]\nargv = [\"/bin/true\"]\n").unwrap_err();
    assert!(e.contains("image.toml:1:") && e.contains("unknown field `servics`"), "{e}");
}

#[test]
fn syntax_errors_point_at_the_line() {
    let e = parse("[services.a]\nargv = [\"/bin/true\"\n").unwrap_err();
    assert!(e.starts_with("image.toml:2:") || e.starts_with("image.toml:3:"), "{e}");
}

#[test]
fn wrong_types_are_errors() {
    let e = parse("[services.a]\nargv = \"/bin/true\"\n").unwrap_err();
    assert!(e.starts_with("image.toml:2:8:") && e.contains("expected a sequence"), "{e}");
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nrestart = \"sometimes\"\n").unwrap_err();
    assert!(e.starts_with("image.toml:3:") && e.contains("sometimes"), "{e}");
}

#[test]
fn a_missing_argv_is_an_error() {
    let e = parse("[services.a]\nafter = []\n").unwrap_err();
    assert!(e.contains("missing field `argv`"), "{e}");
    let e = parse("[services.a]\nargv = []\n").unwrap_err();
    assert_eq!(e, "image.toml:2: service a: argv must name a program");
}

#[test]
fn relative_programs_are_refused() {
    let e = parse("[services.a]\nargv = [\"sleep\", \"1\"]\n").unwrap_err();
    assert!(e.starts_with("image.toml:2: service a: argv[0] \"sleep\" must be an absolute path"), "{e}");
}

#[test]
fn unsafe_names_are_refused() {
    let e = parse("[services.\"a/b\"]\nargv = [\"/bin/true\"]\n").unwrap_err();
    assert!(e.contains("service name \"a/b\""), "{e}");
}

#[test]
fn unknown_dependencies_are_refused() {
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nafter = [\"b\"]\n").unwrap_err();
    assert_eq!(e, "image.toml:3: service a: depends on unknown service \"b\"");
}

#[test]
fn dependency_cycles_are_refused() {
    let e = parse(
        "[services.a]\nargv = [\"/bin/true\"]\nafter = [\"b\"]\n[services.b]\nargv = [\"/bin/true\"]\nafter = [\"a\"]\n",
    )
    .unwrap_err();
    assert!(e.contains("cycle: a -> b -> a"), "{e}");
}

#[test]
fn bad_backoff_and_timeouts_are_refused() {
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nbackoff = { initial-s = 5, max-s = 1 }\n").unwrap_err();
    assert!(e.starts_with("image.toml:3: service a: backoff"), "{e}");
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nbackoff = { factor = 0.5 }\n").unwrap_err();
    assert!(e.starts_with("image.toml:3:22: factor: 0.5 is not a factor between 1 and 100"), "{e}");
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nstop-timeout-s = -1\n").unwrap_err();
    assert!(e.starts_with("image.toml:3:18: stop-timeout-s: -1 is not a number of seconds"), "{e}");
    for bad in ["inf", "nan", "-inf", "1e300"] {
        let e = parse(&format!("[services.a]\nargv = [\"/bin/true\"]\nready = {{ timeout-s = {bad} }}\n")).unwrap_err();
        assert!(e.starts_with("image.toml:3:") && e.contains("timeout-s: "), "{bad}: {e}");
    }
}

#[test]
fn readiness_checks_are_validated() {
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nready = { tcp = \"localhost\" }\n").unwrap_err();
    assert!(e.contains("ready.tcp \"localhost\" is not an ip:port"), "{e}");
    let e =
        parse("[services.a]\nargv = [\"/bin/true\"]\nready = { path = \"/x\", tcp = \"127.0.0.1:1\" }\n").unwrap_err();
    assert!(e.contains("not both"), "{e}");
    let e = parse("[services.a]\nargv = [\"/bin/true\"]\nready = { file = \"/x\" }\n").unwrap_err();
    assert!(e.contains("unknown field `file`"), "{e}");
}

#[test]
fn boot_settings_have_defaults_and_are_checked() {
    let c = parse_image(Path::new("image.toml"), "").unwrap();
    assert!(!c.boot.network);
    assert_eq!(c.boot.api_port, None);
    let c = parse_image(Path::new("image.toml"), "[boot]\nnetwork = true\nconfig-timeout-s = 5\napi-port = 7480\n")
        .unwrap();
    assert!(c.boot.network);
    assert_eq!(c.boot.api_port, Some(7480));
    assert_eq!(c.boot.config_timeout_s, 5.0);
    let e = parse_image(Path::new("image.toml"), "[boot]\nconfig-timeout-s = -5\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "image.toml:2:20: config-timeout-s: -5 is not a number of seconds between 0 and 604800 (a week)"
    );
    let e = parse_image(Path::new("image.toml"), "[boot]\nnetwrk = true\n").unwrap_err();
    assert!(e.to_string().starts_with("image.toml:2:1: unknown field `netwrk`"), "{e}");
}

#[test]
fn backoff_grows_exponentially_up_to_the_cap() {
    let b = Backoff { initial_s: 0.5, factor: 2.0, max_s: 3.0, ..Backoff::default() };
    let d: Vec<f64> = (1..=5).map(|n| b.delay(n).as_secs_f64()).collect();
    assert_eq!(d, vec![0.5, 1.0, 2.0, 3.0, 3.0]);
    // Huge restart counts do not overflow.
    assert_eq!(b.delay(u32::MAX).as_secs_f64(), 3.0);
}
