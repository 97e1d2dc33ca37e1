//! `bladevisor list` / `GET /v1/cluster/guests`: every guest of the cluster, where it runs or
//! why it does not, from what every blade says of it, asked at once. A blade that could not be
//! asked is named, and a guest whose whereabouts depend on it says so rather than guessing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{GuestState, GuestStatus};
use crate::config::guest::GuestSpec;

/// What one blade answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BladeSeen {
    pub node: String,
    /// Why it could not be asked; None when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One guest across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestWhere {
    pub name: String,
    /// The blade it is placed on.
    pub home: String,
    /// The blade that runs it (or holds it paused, incoming, in doubt); None when none does.
    pub runs_on: Option<String>,
    /// Its state there, else at home (`unknown` when home could not be asked).
    pub state: GuestState,
    /// Why it is not running, or what is wrong (two copies; a blade that could not be asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The other blades that also hold a process of it (should be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterGuests {
    pub blades: Vec<BladeSeen>,
    pub guests: Vec<GuestWhere>,
}

/// Merges the blades' answers (each its guests' status here, or why it could not be asked)
/// into one view of the configuration's guests.
pub fn merge(
    guests: &BTreeMap<String, GuestSpec>,
    answers: Vec<(String, Result<Vec<GuestStatus>, String>)>,
) -> ClusterGuests {
    let blades = answers.iter().map(|(n, a)| BladeSeen { node: n.clone(), error: a.as_ref().err().cloned() }).collect();
    let unreachable: Vec<&str> = answers.iter().filter(|(_, a)| a.is_err()).map(|(n, _)| n.as_str()).collect();
    let seen = |node: &str, guest: &str| -> Option<&GuestStatus> {
        answers.iter().find(|(n, _)| n == node)?.1.as_ref().ok()?.iter().find(|g| g.name == guest)
    };
    let guests = guests
        .values()
        .map(|spec| {
            // Where it occupies a blade: running first, then any other state that holds a
            // process (paused, incoming, in doubt).
            let mut holders: Vec<(&str, &GuestStatus)> = answers
                .iter()
                .filter_map(|(n, _)| {
                    seen(n, &spec.name).filter(|g| g.state.occupies() && g.pid.is_some()).map(|g| (n.as_str(), g))
                })
                .collect();
            holders.sort_by_key(|(_, g)| g.state != GuestState::Running);
            let mut w = GuestWhere {
                name: spec.name.clone(),
                home: spec.node.clone(),
                runs_on: None,
                state: GuestState::Unknown,
                reason: None,
                also_on: vec![],
            };
            let doubtful: Vec<&str> = unreachable.iter().copied().filter(|n| spec.may_run_on(n)).collect();
            match holders.split_first() {
                Some(((node, g), rest)) => {
                    w.runs_on = Some(node.to_string());
                    w.state = g.state;
                    w.reason = g.reason.clone();
                    w.also_on = rest.iter().map(|(n, _)| n.to_string()).collect();
                    if !w.also_on.is_empty() {
                        w.reason = Some(format!(
                            "a process of it on {} blades: {node}, {}",
                            rest.len() + 1,
                            w.also_on.join(", ")
                        ));
                    }
                }
                None => {
                    if let Some(g) = seen(&spec.node, &spec.name) {
                        w.state = g.state;
                        w.reason = g.reason.clone();
                    }
                    if !doubtful.is_empty() {
                        w.reason = Some(format!(
                            "not running on the blades that answered; {} could not be asked",
                            doubtful.join(", ")
                        ));
                    }
                }
            }
            w
        })
        .collect();
    ClusterGuests { blades, guests }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, node: &str, also: &[&str]) -> GuestSpec {
        let text = format!("node = \"{node}\"\nmemory-mib = 32\nmigrate-to = {also:?}\n");
        let mut g: GuestSpec = toml::from_str(&text).unwrap();
        g.name = name.into();
        g
    }

    fn st(name: &str, state: GuestState, pid: Option<u32>, reason: Option<&str>) -> GuestStatus {
        GuestStatus {
            name: name.into(),
            state,
            pid,
            restarts: 0,
            uptime_s: 1.0,
            disks: vec![],
            reason: reason.map(String::from),
            runs_on: None,
            lease: None,
            usage: None,
        }
    }

    #[test]
    fn each_guest_is_where_a_blade_runs_it_or_says_why_not() {
        let guests: BTreeMap<String, GuestSpec> = [
            ("web".to_string(), spec("web", "blade1", &["blade2"])),
            ("db".to_string(), spec("db", "blade1", &["blade2"])),
            ("mail".to_string(), spec("mail", "blade3", &[])),
        ]
        .into();
        let answers = vec![
            (
                "blade1".to_string(),
                Ok(vec![
                    st("web", GuestState::Elsewhere, None, None),
                    st("db", GuestState::Stopped, None, Some("stopped by the operator")),
                ]),
            ),
            ("blade2".to_string(), Ok(vec![st("web", GuestState::Running, Some(42), None)])),
            ("blade3".to_string(), Err("connection refused".to_string())),
        ];
        let v = merge(&guests, answers);
        assert_eq!(v.blades[2], BladeSeen { node: "blade3".into(), error: Some("connection refused".into()) });
        let by = |n: &str| v.guests.iter().find(|g| g.name == n).unwrap().clone();
        let web = by("web");
        assert_eq!(
            (web.runs_on.as_deref(), web.state, web.home.as_str()),
            (Some("blade2"), GuestState::Running, "blade1")
        );
        let db = by("db");
        assert_eq!(
            (db.runs_on, db.state, db.reason.as_deref()),
            (None, GuestState::Stopped, Some("stopped by the operator"))
        );
        let mail = by("mail");
        assert_eq!((mail.runs_on, mail.state), (None, GuestState::Unknown));
        assert_eq!(mail.reason.as_deref(), Some("not running on the blades that answered; blade3 could not be asked"));
    }

    #[test]
    fn two_copies_are_shown_as_the_fault_they_are() {
        let guests: BTreeMap<String, GuestSpec> = [("web".to_string(), spec("web", "blade1", &["blade2"]))].into();
        let answers = vec![
            ("blade1".to_string(), Ok(vec![st("web", GuestState::InDoubt, Some(7), None)])),
            ("blade2".to_string(), Ok(vec![st("web", GuestState::Running, Some(42), None)])),
        ];
        let w = merge(&guests, answers).guests.remove(0);
        assert_eq!((w.runs_on.as_deref(), w.also_on.clone()), (Some("blade2"), vec!["blade1".to_string()]));
        assert_eq!(w.reason.as_deref(), Some("a process of it on 2 blades: blade2, blade1"));
    }
}
