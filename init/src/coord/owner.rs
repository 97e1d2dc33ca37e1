//! One owner per guest: before a blade starts (or resumes) a guest, every other blade that may
//! run it is asked. A blade that runs it wins; a blade that cannot be asked is not taken as
//! "not running" (the guest may run on the far side of a partition). Only an operator's
//! explicit override, which is logged, starts it regardless.

use crate::proto::GuestState;

/// What one peer said about a guest.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The guest is there in this state (see [`GuestState::occupies`]).
    State(GuestState),
    /// The peer has no process for it.
    Absent,
    /// The peer could not be asked.
    Unreachable(String),
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Free,
    RunsOn { node: String, state: GuestState },
    Unknown { node: String, why: String },
}

impl Verdict {
    pub fn explain(&self, guest: &str) -> String {
        match self {
            Verdict::Free => format!("no other blade runs guest {guest}"),
            Verdict::RunsOn { node, state } => format!("guest {guest} runs on {node} ({state})"),
            Verdict::Unknown { node, why } => format!(
                "cannot tell whether {node} runs guest {guest} ({why}); not starting it here (an operator may override with --force)"
            ),
        }
    }
}

/// A definite "runs there" wins over an unanswered question, which wins over "free".
pub fn decide(answers: &[(String, Answer)]) -> Verdict {
    for (node, a) in answers {
        if let Answer::State(s) = a {
            if s.occupies() {
                return Verdict::RunsOn { node: node.clone(), state: *s };
            }
        }
    }
    for (node, a) in answers {
        if let Answer::Unreachable(why) = a {
            return Verdict::Unknown { node: node.clone(), why: why.clone() };
        }
    }
    Verdict::Free
}

/// What to do with a guest left paused here by a migration its destination did not confirm,
/// once the destination has been asked again.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The destination runs it: the migration did complete; the paused copy here goes.
    DestinationKeepsIt,
    /// The destination has no copy: the only one is here; resume it.
    ResumeHere,
    /// The destination still holds its paused, never resumed copy: remove it, then resume here.
    AbortThereResumeHere,
    /// Still no answer: touch nothing.
    StillUnknown(String),
}

pub fn resolve_in_doubt(verdict: &Verdict) -> Resolution {
    match verdict {
        Verdict::RunsOn { state: GuestState::Incoming, .. } => Resolution::AbortThereResumeHere,
        Verdict::RunsOn { .. } => Resolution::DestinationKeepsIt,
        Verdict::Free => Resolution::ResumeHere,
        Verdict::Unknown { why, .. } => Resolution::StillUnknown(why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state as a peer sends it.
    fn st(s: &str) -> GuestState {
        serde_json::from_value(serde_json::json!(s)).unwrap()
    }

    fn ask(answers: &[(&str, Answer)]) -> Verdict {
        decide(&answers.iter().map(|(n, a)| (n.to_string(), a.clone())).collect::<Vec<_>>())
    }

    #[test]
    fn a_guest_that_runs_elsewhere_is_refused_naming_the_blade() {
        let v = ask(&[("blade2", Answer::Absent), ("blade3", Answer::State(st("running")))]);
        assert_eq!(v, Verdict::RunsOn { node: "blade3".into(), state: GuestState::Running });
        assert_eq!(v.explain("web"), "guest web runs on blade3 (running)");
        // Mid-migration, crashed-and-restarting and paused-in-doubt copies count as running.
        for s in ["incoming", "migrating", "crashed", "in-doubt", "starting", "a-state-from-a-newer-release"] {
            assert!(matches!(ask(&[("b", Answer::State(st(s)))]), Verdict::RunsOn { .. }), "{s}");
        }
    }

    #[test]
    fn an_unreachable_peer_is_not_taken_as_not_running() {
        let v = ask(&[("blade2", Answer::Unreachable("connection refused".into())), ("blade3", Answer::Absent)]);
        assert!(matches!(&v, Verdict::Unknown { node, .. } if node == "blade2"));
        assert!(v.explain("web").contains("cannot tell whether blade2 runs guest web (connection refused)"));
        // A definite answer elsewhere is the better reason.
        let v = ask(&[("blade2", Answer::Unreachable("timeout".into())), ("blade3", Answer::State(st("running")))]);
        assert!(matches!(v, Verdict::RunsOn { .. }));
    }

    #[test]
    fn an_in_doubt_guest_is_resolved_only_on_a_clear_answer() {
        let r = |a: Answer| resolve_in_doubt(&ask(&[("blade2", a)]));
        assert_eq!(r(Answer::State(st("running"))), Resolution::DestinationKeepsIt);
        // Paused at the destination, waiting for a resume that never came: that copy goes.
        assert_eq!(r(Answer::State(st("incoming"))), Resolution::AbortThereResumeHere);
        assert_eq!(r(Answer::Absent), Resolution::ResumeHere);
        assert_eq!(r(Answer::State(st("stopped"))), Resolution::ResumeHere);
        assert_eq!(r(Answer::Unreachable("timeout".into())), Resolution::StillUnknown("timeout".into()));
    }

    #[test]
    fn stopped_failed_or_absent_copies_leave_the_guest_free() {
        let v = ask(&[
            ("blade2", Answer::State(st("stopped"))),
            ("blade3", Answer::State(st("failed"))),
            ("blade4", Answer::State(st("elsewhere"))),
            ("blade5", Answer::Absent),
        ]);
        assert_eq!(v, Verdict::Free);
        assert_eq!(ask(&[]), Verdict::Free, "a guest with no other blade is its home's alone");
    }
}
