//! Evacuation: every guest of a drained blade goes to another of its blades, chosen from the
//! candidates' capacity answers.

use crate::config::guest::GuestSpec;
use crate::proto::Capacity;

/// Picks where a guest goes: the first of its blades, in configuration order, that answered,
/// is not drained and has the memory. `answers` holds each candidate's status or why not.
pub fn choose_target(
    guest: &GuestSpec,
    me: &str,
    answers: &[(String, Result<Capacity, String>)],
) -> Result<String, String> {
    let mut why = vec![];
    for node in guest.blades().filter(|n| *n != me) {
        match answers.iter().find(|(n, _)| n == node).map(|(_, a)| a) {
            None => why.push(format!("{node}: not asked")),
            Some(Err(e)) => why.push(format!("{node}: {e}")),
            Some(Ok(s)) if s.drained.is_some() => why.push(format!("{node}: drained")),
            Some(Ok(s)) if s.memory.available_mib < guest.memory_mib + 64 => why.push(format!(
                "{node}: {} MiB available, the guest needs {} MiB",
                s.memory.available_mib, guest.memory_mib
            )),
            Some(Ok(_)) => return Ok(node.clone()),
        }
    }
    if why.is_empty() {
        why.push("it may run on no other blade (migrate-to is empty)".into());
    }
    Err(format!("no blade can take guest {}: {}", guest.name, why.join("; ")))
}
