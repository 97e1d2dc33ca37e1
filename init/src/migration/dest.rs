//! The destination side: a guest started paused (`-S -incoming defer`) is given the source's
//! capabilities and a listening port, and is resumed only when the source says the stream is
//! complete and QEMU here agrees.

use serde_json::json;

use super::{caps_arg, Vm};

/// Sets the capabilities and opens the stream listener on the first port of `ports` that is
/// neither `taken` (by another incoming guest) nor in use. Returns the port.
pub fn listen(
    vm: &mut dyn Vm,
    caps: &[String],
    ports: std::ops::RangeInclusive<u16>,
    taken: &[u16],
    tls: Option<&super::tls::StreamTls>,
) -> Result<u16, String> {
    vm.execute("migrate-set-capabilities", caps_arg(caps))?;
    if let Some(t) = tls {
        super::tls::destination(vm, t)?;
    }
    let (first, last) = (*ports.start(), *ports.end());
    for port in ports.filter(|p| !taken.contains(p)) {
        match vm.execute("migrate-incoming", json!({ "uri": format!("tcp:0.0.0.0:{port}") })) {
            Ok(_) => return Ok(port),
            Err(e) if e.contains("in use") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(format!("no free migration port in {first}-{last}"))
}

/// Runs the guest once its incoming stream is complete, and once it holds the guest's lease (the
/// source released it at switchover); confirms QEMU says it runs.
pub fn resume(vm: &mut dyn Vm, lease: &mut dyn super::Lease) -> Result<(), String> {
    let q = vm.execute("query-migrate", json!({}))?;
    let status = q["status"].as_str().unwrap_or("none");
    if status != "completed" {
        return Err(format!("the incoming stream is {status}, not completed"));
    }
    lease.acquire().map_err(|e| format!("cannot take the guest's lease: {e}"))?;
    vm.execute("cont", json!({}))?;
    let st = vm.execute("query-status", json!({}))?;
    match st["status"].as_str() {
        Some("running") => Ok(()),
        s => Err(format!("after cont the guest is {}", s.unwrap_or("?"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::testing::Transcript;
    use serde_json::Value;

    fn ok() -> Result<Value, String> {
        Ok(json!({}))
    }

    #[test]
    fn the_listener_takes_the_first_free_port() {
        let mut vm = Transcript::new(vec![
            ("migrate-set-capabilities", ok()),
            (
                "migrate-incoming",
                Err("QMP migrate-incoming: GenericError: Failed to bind socket: Address already in use".into()),
            ),
            ("migrate-incoming", ok()),
        ]);
        let caps = vec!["events".to_string()];
        assert_eq!(listen(&mut vm, &caps, 49152..=49155, &[49152], None), Ok(49154));
        assert_eq!(vm.seen[1].1, json!({"uri": "tcp:0.0.0.0:49153"}));
        let mut full = Transcript::new(vec![("migrate-set-capabilities", ok())]);
        assert_eq!(
            listen(&mut full, &caps, 49152..=49153, &[49152, 49153], None),
            Err("no free migration port in 49152-49153".into())
        );
    }

    #[test]
    fn a_capability_this_qemu_lacks_is_an_error() {
        let mut vm = Transcript::new(vec![(
            "migrate-set-capabilities",
            Err("QMP migrate-set-capabilities: GenericError: Capability 'x' not found".into()),
        )]);
        assert!(listen(&mut vm, &["x".into()], 49152..=49152, &[], None).unwrap_err().contains("not found"));
    }

    #[test]
    fn resume_needs_a_completed_stream_and_confirms_running() {
        let mut vm = Transcript::new(vec![
            ("query-migrate", Ok(json!({"status": "completed"}))),
            ("cont", ok()),
            ("query-status", Ok(json!({"status": "running", "running": true}))),
        ]);
        assert_eq!(resume(&mut vm, &mut crate::migration::NoLease), Ok(()));
        let mut early = Transcript::new(vec![("query-migrate", Ok(json!({"status": "active"})))]);
        assert_eq!(
            resume(&mut early, &mut crate::migration::NoLease),
            Err("the incoming stream is active, not completed".into())
        );
        assert!(!early.commands().contains(&"cont"));
        let mut stuck = Transcript::new(vec![
            ("query-migrate", Ok(json!({"status": "completed"}))),
            ("cont", ok()),
            ("query-status", Ok(json!({"status": "paused"}))),
        ]);
        assert_eq!(resume(&mut stuck, &mut crate::migration::NoLease), Err("after cont the guest is paused".into()));
    }
}
