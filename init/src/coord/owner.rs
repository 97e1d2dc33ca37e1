//! One owner per guest: before a blade starts (or resumes) a guest, every other blade of the
//! cluster is asked, all at once. A blade that runs it wins, and so does any sign that the guest
//! runs elsewhere; a blade that cannot be asked is not taken as "not running" (the guest may run
//! on the far side of a partition). Only an operator's explicit override, which is logged,
//! starts it regardless.

use crate::proto::GuestState;

/// What one peer said about a guest.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The guest is there in this state (see [`GuestState::occupies`]).
    State(GuestState),
    /// The peer believes the guest runs on that blade.
    Elsewhere(String),
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
            Verdict::RunsOn { node, state: GuestState::Elsewhere } => {
                format!("guest {guest} runs on {node} (as another blade says)")
            }
            Verdict::RunsOn { node, state } => format!("guest {guest} runs on {node} ({state})"),
            Verdict::Unknown { node, why } => format!(
                "cannot tell whether {node} runs guest {guest} ({why}); not starting it here (an operator may override with --force)"
            ),
        }
    }
}

/// What `me` concludes from the other blades' answers: a definite "runs there" wins over an
/// unanswered question, which wins over "free". A blade that says the guest runs on a third
/// one counts as that one running it, unless the third one is `me` (which does not run it:
/// it is asking). A peer that says "elsewhere" without saying where cannot be taken as free.
pub fn decide(me: &str, answers: &[(String, Answer)]) -> Verdict {
    for (node, a) in answers {
        match a {
            Answer::State(s) if s.occupies() => return Verdict::RunsOn { node: node.clone(), state: *s },
            Answer::Elsewhere(there) if there != me => {
                return Verdict::RunsOn { node: there.clone(), state: GuestState::Elsewhere }
            }
            _ => {}
        }
    }
    for (node, a) in answers {
        match a {
            Answer::Unreachable(why) => return Verdict::Unknown { node: node.clone(), why: why.clone() },
            Answer::State(GuestState::Elsewhere) => {
                let why = "it says the guest runs elsewhere, without saying where".to_string();
                return Verdict::Unknown { node: node.clone(), why };
            }
            _ => {}
        }
    }
    Verdict::Free
}

/// What to do with a guest left paused here by a migration its destination did not confirm,
/// once every other blade has been asked again.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Another blade runs it (the destination, or one it moved on to): the paused copy here goes.
    RunsThere(String),
    /// No blade has a copy: the only one is here; resume it.
    ResumeHere,
    /// The destination still holds its paused, never resumed copy, and no other blade runs the
    /// guest: remove that copy, then resume here.
    AbortThereResumeHere,
    /// A blade could not be asked: touch nothing.
    StillUnknown(String),
}

/// Resolves an in-doubt guest whose migration went to `to`, from every other blade's answer.
pub fn resolve_in_doubt(me: &str, to: &str, answers: &[(String, Answer)]) -> Resolution {
    // The destination's paused, never resumed copy is not a running one: look past it first.
    let others: Vec<(String, Answer)> =
        answers.iter().filter(|(n, a)| !(n == to && *a == Answer::State(GuestState::Incoming))).cloned().collect();
    match decide(me, &others) {
        Verdict::RunsOn { node, .. } => Resolution::RunsThere(node),
        Verdict::Unknown { node, why } => Resolution::StillUnknown(format!("{node}: {why}")),
        Verdict::Free if others.len() < answers.len() => Resolution::AbortThereResumeHere,
        Verdict::Free => Resolution::ResumeHere,
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
        decide("blade1", &answers.iter().map(|(n, a)| (n.to_string(), a.clone())).collect::<Vec<_>>())
    }

    fn resolve(answers: &[(&str, Answer)]) -> Resolution {
        let answers: Vec<(String, Answer)> = answers.iter().map(|(n, a)| (n.to_string(), a.clone())).collect();
        resolve_in_doubt("blade1", "blade2", &answers)
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
    fn a_blade_that_says_the_guest_runs_on_a_third_one_is_believed() {
        // blade2 migrated it to blade4, which this blade's configuration does not list.
        let v = ask(&[("blade2", Answer::Elsewhere("blade4".into())), ("blade3", Answer::Absent)]);
        assert_eq!(v, Verdict::RunsOn { node: "blade4".into(), state: GuestState::Elsewhere });
        assert_eq!(v.explain("web"), "guest web runs on blade4 (as another blade says)");
        // That it runs here is not true (this blade is asking because it does not run it).
        assert_eq!(ask(&[("blade2", Answer::Elsewhere("blade1".into()))]), Verdict::Free);
        // "Elsewhere" without a place (an older peer) is not "free".
        assert!(matches!(ask(&[("blade2", Answer::State(GuestState::Elsewhere))]), Verdict::Unknown { .. }));
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
        assert_eq!(resolve(&[("blade2", Answer::State(st("running")))]), Resolution::RunsThere("blade2".into()));
        // Paused at the destination, waiting for a resume that never came: that copy goes.
        assert_eq!(resolve(&[("blade2", Answer::State(st("incoming")))]), Resolution::AbortThereResumeHere);
        assert_eq!(resolve(&[("blade2", Answer::Absent)]), Resolution::ResumeHere);
        assert_eq!(resolve(&[("blade2", Answer::State(st("stopped")))]), Resolution::ResumeHere);
        assert!(matches!(resolve(&[("blade2", Answer::Unreachable("timeout".into()))]), Resolution::StillUnknown(_)));
    }

    #[test]
    fn resolve_asks_every_blade_not_only_the_destination() {
        // The guest reached blade2, then moved on to blade3: blade2 says "elsewhere".
        let r = resolve(&[("blade2", Answer::Elsewhere("blade3".into())), ("blade3", Answer::State(st("running")))]);
        assert_eq!(r, Resolution::RunsThere("blade3".into()), "the paused copy here must not resume");
        // A blade that cannot be asked might be where it went: nothing is resumed.
        let r = resolve(&[("blade2", Answer::Absent), ("blade3", Answer::Unreachable("timeout".into()))]);
        assert!(matches!(r, Resolution::StillUnknown(_)), "{r:?}");
        // The destination's paused copy is removed only when no other blade runs the guest.
        let r = resolve(&[("blade2", Answer::State(st("incoming"))), ("blade3", Answer::State(st("running")))]);
        assert_eq!(r, Resolution::RunsThere("blade3".into()));
    }

    #[test]
    fn stopped_failed_or_absent_copies_leave_the_guest_free() {
        let v = ask(&[
            ("blade2", Answer::State(st("stopped"))),
            ("blade3", Answer::State(st("failed"))),
            ("blade4", Answer::Elsewhere("blade1".into())),
            ("blade5", Answer::Absent),
        ]);
        assert_eq!(v, Verdict::Free);
        assert_eq!(ask(&[]), Verdict::Free, "a guest with no other blade is its home's alone");
    }
}
