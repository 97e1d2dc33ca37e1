//! The coordinator's decisions, against a fake blade whose services follow the effects as the
//! supervisor would. Each test is a sentence an operator would say.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::owner::Verdict;
use super::placement::OWNER_RETRY;
use super::*;
use crate::migration::{Ending, Outcome};
use crate::proto::request::{Answer, Operator, Peer, Refusal, Reply, Why};
use crate::proto::{Capacity, ServiceAction};
use crate::proto::{GuestState, GuestStatus};

const CLUSTER: &str = r#"
[cluster]
name = "lab"
token = "s3cret-s3cret-s3cret"

[nodes.blade1]
management = { interface = "eth0", address = "10.0.0.11/24" }
[nodes.blade2]
management = { interface = "eth0", address = "10.0.0.12/24" }
[nodes.blade3]
management = { interface = "eth0", address = "10.0.0.13/24" }

[aliases]
vm1 = { wwid = "3600a0001" }
vm2 = { wwid = "3600a0002" }
vm3 = { wwid = "3600a0003" }

[guests.web]
node = "blade1"
migrate-to = ["blade2", "blade3"]
memory-mib = 512
disks = [{ alias = "vm1" }]

[guests.db]
node = "blade1"
memory-mib = 1024
disks = [{ alias = "vm2" }]

[guests.batch]
node = "blade2"
migrate-to = ["blade1"]
memory-mib = 256
disks = [{ alias = "vm3" }]
"#;

/// A blade whose services follow the effects the way the supervisor would.
struct FakeBlade {
    services: RefCell<BTreeMap<String, ServiceState>>,
    luns: BTreeMap<String, LunState>,
    memory: Memory,
    /// Machine types its QEMU provides (None: it could not be asked).
    machines: Option<Vec<&'static str>>,
}

impl Blade for FakeBlade {
    fn service(&self, guest: &str) -> Option<ServiceStatus> {
        self.services.borrow().get(guest).map(|s| ServiceStatus {
            name: service_name(guest),
            state: *s,
            pid: Some(100),
            restarts: 0,
            last_exit: None,
            since_s: 1.0,
            reason: None,
            memory_bytes: None,
            memory_file_bytes: None,
            cpu_seconds: None,
        })
    }
    fn lun(&self, alias: &str) -> Option<LunState> {
        self.luns.get(alias).copied()
    }
    fn memory(&self) -> Memory {
        self.memory.clone()
    }
    fn qemu_lacks(&self, machine: &str, _cpu: &str) -> Option<String> {
        let m = self.machines.as_ref()?;
        (!m.contains(&machine)).then(|| format!("its QEMU does not provide machine type {machine}"))
    }
    fn release(&self) -> String {
        "1.4".into()
    }
}

/// One blade's coordinator, its fake blade, and what it answered and asked for.
struct Lab {
    c: Coordinator,
    blade: FakeBlade,
    now: Instant,
    next_ticket: Ticket,
    replies: BTreeMap<Ticket, Reply>,
    /// Every effect other than replies, in order.
    asked: Vec<Effect>,
}

impl Lab {
    fn on(node: &str) -> Lab {
        Lab::with(CLUSTER, node)
    }

    fn with(cluster: &str, node: &str) -> Lab {
        let cfg = crate::config::cluster::parse_cluster(std::path::Path::new("cluster.toml"), cluster).unwrap();
        let healthy = ["vm1", "vm2", "vm3"].map(|a| (a.to_string(), LunState::Healthy));
        let mut lab = Lab {
            c: Coordinator::new(node, Some(&cfg)),
            blade: FakeBlade {
                services: RefCell::default(),
                luns: healthy.into_iter().collect(),
                memory: Memory { total_mib: 4096, used_mib: 1024, available_mib: 3072, ..Default::default() },
                machines: None,
            },
            now: Instant::now(),
            next_ticket: 0,
            replies: BTreeMap::new(),
            asked: vec![],
        };
        lab.c.start();
        lab.settle();
        lab
    }

    /// Applies the effects the way the edge would (services only: peers answer by `report`).
    fn settle(&mut self) {
        for e in self.c.take_effects() {
            let mut services = self.blade.services.borrow_mut();
            match &e {
                Effect::Reply(t, r) => {
                    self.replies.insert(*t, r.clone());
                    continue;
                }
                Effect::AddService { guest, kind: ServiceKind::Defined } => {
                    services.insert(guest.clone(), ServiceState::Stopped);
                }
                Effect::AddService { guest, .. } => {
                    services.insert(guest.clone(), ServiceState::Running);
                }
                Effect::Service { guest, action, ticket } => {
                    let st = match action {
                        ServiceAction::Start | ServiceAction::Restart => ServiceState::Running,
                        ServiceAction::Stop => ServiceState::Stopped,
                        ServiceAction::Kill => ServiceState::Backoff,
                    };
                    services.insert(guest.clone(), st);
                    if let Some(t) = ticket {
                        self.replies.insert(*t, Ok(Answer::done(format!("guest-{guest}: requested"))));
                    }
                }
                Effect::Discard(guest) => {
                    services.remove(guest);
                }
                _ => {}
            }
            self.asked.push(e);
        }
    }

    fn tick(&mut self) {
        self.c.tick(&self.blade, self.now);
        self.settle();
    }

    fn report(&mut self, r: Report) {
        self.c.report(r, &self.blade, self.now);
        self.settle();
    }

    fn operator(&mut self, op: Operator) -> Option<Reply> {
        self.next_ticket += 1;
        let t = self.next_ticket;
        self.c.operator(op, t, &self.blade, self.now);
        self.settle();
        self.replies.remove(&t)
    }

    fn peer(&mut self, p: Peer) -> (Ticket, Option<Reply>) {
        self.next_ticket += 1;
        let t = self.next_ticket;
        self.c.peer(p, t, &self.blade, self.now);
        self.settle();
        (t, self.replies.remove(&t))
    }

    fn state(&self, guest: &str) -> GuestState {
        self.c.guest_here(guest, &self.blade).guest.map(|g| g.state).unwrap_or(GuestState::Unknown)
    }

    fn status(&self, guest: &str) -> GuestStatus {
        self.c.guest_here(guest, &self.blade).guest.expect("the guest is shown")
    }

    fn asked_owners(&self, guest: &str) -> Option<Vec<String>> {
        self.asked.iter().rev().find_map(|e| match e {
            Effect::AskOwners { guest: g, peers, .. } if g == guest => Some(peers.clone()),
            _ => None,
        })
    }

    /// The other blades answer every pending owner check: nobody runs the guest.
    fn all_free(&mut self) {
        let pending: Vec<(String, bool, Option<Ticket>)> = self
            .asked
            .iter()
            .filter_map(|e| match e {
                Effect::AskOwners { guest, force, ticket, .. } => Some((guest.clone(), *force, *ticket)),
                _ => None,
            })
            .collect();
        self.asked.retain(|e| !matches!(e, Effect::AskOwners { .. }));
        for (guest, force, ticket) in pending {
            self.report(Report::OwnersAnswered { guest, verdict: Verdict::Free, force, ticket });
        }
    }

    fn refused(r: Option<Reply>) -> Refusal {
        match r {
            Some(Err(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

fn start(name: &str) -> Operator {
    Operator::Guest { name: name.into(), action: ServiceAction::Start, force: false }
}

fn free() -> Verdict {
    Verdict::Free
}

/// Boots blade1 with its peers' drain known (nobody remembers it drained).
fn blade1() -> Lab {
    let mut lab = Lab::on("blade1");
    assert!(lab.asked.contains(&Effect::AskDrain), "a blade with peers asks them about its drain first");
    lab.report(Report::DrainKnown(None));
    lab
}

#[test]
fn nothing_is_placed_before_the_peers_said_whether_this_blade_was_drained() {
    let mut lab = Lab::on("blade1");
    lab.tick();
    assert!(lab.blade.services.borrow().is_empty());
    assert!(lab.asked_owners("web").is_none());
    lab.report(Report::DrainKnown(Some("drained before reboot, as blade2 remembers".into())));
    lab.tick();
    assert!(lab.blade.services.borrow().is_empty(), "a blade that comes back drained places nothing");
    assert!(lab.status("db").reason.unwrap().contains("this blade is drained"));
}

#[test]
fn a_guest_of_this_blade_alone_starts_once_its_disk_is_there() {
    let mut lab = blade1();
    lab.blade.luns.insert("vm2".into(), LunState::Missing);
    lab.tick();
    assert_eq!(lab.state("db"), GuestState::WaitingForDisks);
    assert_eq!(lab.status("db").reason.as_deref(), Some("waiting for disk vm2 (missing)"));
    // The disk appears: the storage event makes placement look again.
    lab.blade.luns.insert("vm2".into(), LunState::Healthy);
    lab.c.storage_changed("vm2");
    lab.tick();
    lab.all_free();
    assert_eq!(lab.state("db"), GuestState::Running);
}

#[test]
fn a_guest_that_needs_more_memory_than_the_blade_has_waits_and_says_why() {
    let mut lab = blade1();
    lab.blade.memory.total_mib = 1024;
    lab.tick();
    assert_eq!(lab.status("db").reason.as_deref(), Some("needs 1024 MiB of memory; this blade has 1024 MiB"));
    let r = Lab::refused(lab.operator(start("db")));
    assert_eq!(r.why, Why::Conflict);
    assert!(r.message.contains("cannot start here"), "{r:?}");
}

#[test]
fn a_guest_that_may_run_elsewhere_starts_only_when_no_other_blade_runs_it() {
    let mut lab = blade1();
    lab.tick();
    assert_eq!(lab.asked_owners("web"), Some(vec!["blade2".to_string(), "blade3".to_string()]));
    lab.tick();
    assert_eq!(lab.state("web"), GuestState::Defined, "not started while the owners are asked");
    lab.report(Report::OwnersAnswered { guest: "web".into(), verdict: free(), force: false, ticket: None });
    assert_eq!(lab.state("web"), GuestState::Running);
}

#[test]
fn a_guest_another_blade_runs_is_left_to_it_until_an_operator_asks_again() {
    let mut lab = blade1();
    lab.tick();
    let verdict = Verdict::RunsOn { node: "blade2".into(), state: GuestState::Running };
    lab.report(Report::OwnersAnswered { guest: "web".into(), verdict, force: false, ticket: None });
    assert_eq!(lab.state("web"), GuestState::Elsewhere);
    assert_eq!(lab.status("web").reason.as_deref(), Some("runs on blade2: guest web runs on blade2 (running)"));
    lab.now += OWNER_RETRY * 4;
    lab.asked.clear();
    lab.tick();
    assert!(lab.asked_owners("web").is_none(), "a definite answer is not asked again by itself");
    // An operator's start asks again, and the answer is the reply.
    assert!(lab.operator(start("web")).is_none(), "the reply waits for the owners");
    assert!(lab.asked_owners("web").is_some());
}

#[test]
fn a_blade_that_cannot_be_asked_is_not_taken_as_not_running_it() {
    let mut lab = blade1();
    lab.tick();
    let verdict = Verdict::Unknown { node: "blade3".into(), why: "connection refused".into() };
    lab.report(Report::OwnersAnswered { guest: "web".into(), verdict, force: false, ticket: None });
    assert_eq!(lab.state("web"), GuestState::Defined);
    assert!(lab.status("web").reason.unwrap().contains("cannot tell whether blade3 runs guest web"));
    lab.asked.clear();
    lab.now += OWNER_RETRY / 2;
    lab.tick();
    assert!(lab.asked_owners("web").is_none(), "not asked again before the retry");
    lab.now += OWNER_RETRY;
    lab.tick();
    assert!(lab.asked_owners("web").is_some(), "asked again after {OWNER_RETRY:?}");
}

#[test]
fn an_operator_may_force_a_start_when_a_blade_cannot_be_asked() {
    let mut lab = blade1();
    lab.tick();
    let verdict = Verdict::Unknown { node: "blade3".into(), why: "timeout".into() };
    lab.report(Report::OwnersAnswered { guest: "web".into(), verdict, force: true, ticket: Some(7) });
    assert_eq!(lab.replies.remove(&7), Some(Ok(Answer::done("guest-web: start requested"))));
    assert_eq!(lab.state("web"), GuestState::Running);
}

#[test]
fn a_drained_blade_starts_nothing_unless_forced() {
    let mut lab = blade1();
    lab.tick();
    lab.operator(Operator::Evacuate { parallel: None });
    assert!(lab.asked.contains(&Effect::TellDrained(true)));
    lab.operator(Operator::Guest { name: "db".into(), action: ServiceAction::Stop, force: false });
    let r = Lab::refused(lab.operator(start("db")));
    assert!(r.message.contains("this blade is drained (evacuated); undrain it, or --force"), "{r:?}");
    lab.next_ticket = 70;
    assert!(lab.operator(Operator::Guest { name: "db".into(), action: ServiceAction::Start, force: true }).is_none());
    lab.all_free();
    assert!(matches!(lab.replies.remove(&71), Some(Ok(_))), "{:?}", lab.replies);
}

#[test]
fn an_unknown_guest_is_refused_naming_the_guests_here() {
    let mut lab = blade1();
    let r = Lab::refused(lab.operator(start("nosuch")));
    assert_eq!(r.why, Why::NotFound);
    assert_eq!(r.message, "no guest named \"nosuch\" on this blade (guests here: batch, db, web)");
}

/// blade1 running web, ready to migrate it.
fn running_web() -> Lab {
    let mut lab = blade1();
    lab.tick();
    lab.all_free();
    assert_eq!((lab.state("web"), lab.state("db")), (GuestState::Running, GuestState::Running));
    lab
}

fn migrate(lab: &mut Lab, to: &str) -> Option<Reply> {
    lab.operator(Operator::Migrate { guest: "web".into(), to: to.into(), bandwidth_mbps: None })
}

fn migration_id(r: Option<Reply>) -> u64 {
    match r {
        Some(Ok(Answer::MigrationStarted(m))) => m.id,
        other => panic!("expected a started migration, got {other:?}"),
    }
}

#[test]
fn a_migrated_guest_runs_at_its_destination_and_its_paused_copy_here_goes() {
    let mut lab = running_web();
    let id = migration_id(migrate(&mut lab, "blade2"));
    assert_eq!(lab.state("web"), GuestState::Migrating);
    assert!(Lab::refused(lab.operator(start("web"))).message.contains("cancel that first"));
    let done = Outcome { result: Ending::Completed, ..Outcome::failed(Phase::Done, "", false) };
    lab.report(Report::MigrationDone { guest: "web".into(), id, outcome: done });
    assert_eq!(lab.state("web"), GuestState::Elsewhere);
    assert!(lab.blade.services.borrow().get("web").is_none(), "the source's process is discarded");
    assert_eq!(lab.c.migration_status(lab.now)[0].phase, Phase::Done);
}

#[test]
fn a_guest_may_migrate_only_to_its_own_blades() {
    let mut lab = running_web();
    assert!(Lab::refused(migrate(&mut lab, "blade1")).message.contains("may not migrate to blade1"));
    let r =
        Lab::refused(lab.operator(Operator::Migrate { guest: "db".into(), to: "blade2".into(), bandwidth_mbps: None }));
    assert_eq!(r.message, "guest db may not migrate to blade2 (its blades besides this one: )");
}

#[test]
fn a_migration_in_doubt_keeps_the_guest_paused_here_until_resolved() {
    let mut lab = running_web();
    let id = migration_id(migrate(&mut lab, "blade2"));
    let doubt = Outcome { result: Ending::InDoubt, ..Outcome::failed(Phase::Done, "no answer", false) };
    lab.report(Report::MigrationDone { guest: "web".into(), id, outcome: doubt });
    assert_eq!(lab.state("web"), GuestState::InDoubt);
    assert!(GuestState::InDoubt.occupies(), "another blade's owner check sees it as taken");
    assert!(Lab::refused(migrate(&mut lab, "blade3")).message.contains("in doubt"));
    // Resolve asks blade2 again; blade2 runs it, so the copy here goes.
    assert!(lab.operator(Operator::Resolve("web".into())).is_none());
    let ticket = lab.asked.iter().rev().find_map(|e| match e {
        Effect::Resolve { guest, to, peers, ticket } if guest == "web" && to == "blade2" => {
            assert_eq!(peers, &["blade2", "blade3"], "every blade is asked, not only the destination");
            Some(*ticket)
        }
        _ => None,
    });
    let ticket = ticket.expect("resolve asks the blades");
    lab.report(Report::Resolved { guest: "web".into(), result: Ok(Some("blade2".into())), ticket });
    assert_eq!(lab.replies[&ticket], Ok(Answer::done("guest web runs on blade2; the paused copy here is removed")));
    assert_eq!(lab.state("web"), GuestState::Elsewhere);
}

#[test]
fn a_guest_arrives_paused_then_runs_here_under_its_own_restart_policy() {
    let mut lab = blade1();
    let (t, r) = lab.peer(Peer::Incoming {
        guest: "batch".into(),
        from: "blade2".into(),
        caps: vec!["events".into()],
        release: None,
    });
    assert!(r.is_none(), "answered once QEMU listens");
    assert_eq!(lab.state("batch"), GuestState::Incoming);
    assert!(lab
        .asked
        .iter()
        .any(|e| matches!(e, Effect::Listen { guest, ports: (49152, 49215), .. } if guest == "batch")));
    lab.report(Report::Listening { guest: "batch".into(), result: Ok(49152), ticket: t });
    assert_eq!(
        lab.replies[&t],
        Ok(Answer::Listening(crate::proto::request::Listening { guest: "batch".into(), port: 49152 }))
    );
    // Only the blade that sends the stream may resume or abort the arrival.
    for p in [
        Peer::IncomingResume { guest: "batch".into(), from: "blade3".into() },
        Peer::IncomingAbort { guest: "batch".into(), from: "blade3".into() },
    ] {
        let (_, r) = lab.peer(p);
        let r = r.expect("answered at once").unwrap_err();
        assert_eq!(r.why, crate::proto::request::Why::Forbidden);
        assert!(r.message.contains("arrives from blade2, not blade3"), "{}", r.message);
    }
    assert_eq!(lab.state("batch"), GuestState::Incoming, "still arriving");
    let (t, _) = lab.peer(Peer::IncomingResume { guest: "batch".into(), from: "blade2".into() });
    lab.report(Report::Resumed { guest: "batch".into(), result: Ok(()), ticket: t });
    assert_eq!(lab.replies[&t], Ok(Answer::done("guest batch runs on blade1")));
    assert_eq!(lab.state("batch"), GuestState::Running);
    assert!(lab.asked.contains(&Effect::Adopt("batch".into())), "its next start is a normal one");
}

#[test]
fn a_guest_whose_machine_type_this_qemu_lacks_is_refused_before_anything_moves() {
    let mut lab = blade1();
    lab.blade.machines = Some(vec!["pc-q35-7.1", "q35"]);
    let (_, r) = lab.peer(Peer::Incoming {
        guest: "batch".into(),
        from: "blade2".into(),
        caps: vec![],
        release: Some("1.5".into()),
    });
    let r = Lab::refused(r);
    assert_eq!(r.why, Why::Conflict);
    assert_eq!(
        r.message,
        "guest batch needs machine type pc-q35-7.2 and CPU model qemu64: blade1 (release 1.4) cannot take it, \
         its QEMU does not provide machine type pc-q35-7.2; blade2 runs release 1.5"
    );
    assert_ne!(lab.state("batch"), GuestState::Incoming, "nothing started here");
    assert!(
        !lab.asked.iter().any(|e| matches!(e, Effect::Listen { .. } | Effect::AddService { .. })),
        "{:?}",
        lab.asked
    );
    // With the machine type, it is taken.
    lab.blade.machines = Some(vec!["pc-q35-7.2"]);
    let (_, r) = lab.peer(Peer::Incoming { guest: "batch".into(), from: "blade2".into(), caps: vec![], release: None });
    assert!(r.is_none(), "answered once QEMU listens");
    assert_eq!(lab.state("batch"), GuestState::Incoming);
}

#[test]
fn an_arrival_from_a_blade_that_may_not_run_the_guest_is_forbidden() {
    let mut lab = blade1();
    let (_, r) = lab.peer(Peer::Incoming { guest: "batch".into(), from: "blade3".into(), caps: vec![], release: None });
    let r = Lab::refused(r);
    assert_eq!(r.why, Why::Forbidden);
    assert_eq!(r.message, "\"blade3\" is not a blade guest batch may migrate from (its blades: blade2, blade1)");
    let (_, r) = lab.peer(Peer::Incoming {
        guest: "batch".into(),
        from: "blade2".into(),
        caps: vec!["x; rm".into()],
        release: None,
    });
    assert_eq!(Lab::refused(r).why, Why::Invalid);
    let (_, r) = lab.peer(Peer::Drained { node: "mallory".into(), drained: true });
    assert_eq!(Lab::refused(r).why, Why::Forbidden);
    assert!(lab.c.drained_nodes().is_empty());
}

#[test]
fn an_arrival_whose_stream_breaks_is_removed_and_the_source_keeps_the_guest() {
    let mut lab = blade1();
    let (t, _) = lab.peer(Peer::Incoming { guest: "batch".into(), from: "blade2".into(), caps: vec![], release: None });
    lab.report(Report::Listening { guest: "batch".into(), result: Ok(49152), ticket: t });
    // QEMU ends when its stream breaks.
    lab.blade.services.borrow_mut().insert("batch".into(), ServiceState::Exited);
    lab.tick();
    assert!(lab.blade.services.borrow().get("batch").is_none());
    let m = &lab.c.migration_status(lab.now)[0];
    assert_eq!((m.phase, m.outcome.as_ref().map(|o| o.result)), (Phase::Done, Some(Ending::Failed)));
    assert!(lab.c.guest_here("batch", &lab.blade).guest.is_none(), "nothing of it is left here");
}

#[test]
fn an_arrival_that_does_not_fit_is_refused_with_the_memory_figures() {
    let mut lab = blade1();
    lab.blade.memory.available_mib = 300;
    let (_, r) = lab.peer(Peer::Incoming { guest: "batch".into(), from: "blade2".into(), caps: vec![], release: None });
    assert_eq!(Lab::refused(r).message, "blade1 has 300 MiB available; guest batch needs 256 MiB");
}

fn capacity(node: &str, available_mib: u64, drained: Option<&str>) -> (String, Result<Capacity, String>) {
    let memory = Memory { total_mib: 8192, used_mib: 0, available_mib, ..Default::default() };
    let c = Capacity {
        node: node.into(),
        drained: drained.map(String::from),
        shutting_down: false,
        memory,
        drained_nodes: vec![],
    };
    (node.to_string(), Ok(c))
}

#[test]
fn an_evacuation_sends_each_guest_to_the_first_of_its_blades_that_can_take_it() {
    let mut lab = running_web();
    let r = lab.operator(Operator::Evacuate { parallel: Some(1) });
    assert!(matches!(r, Some(Ok(Answer::EvacuationStarted(_)))), "{r:?}");
    assert!(lab.asked.contains(&Effect::AskCapacity(vec!["blade2".into(), "blade3".into()])));
    // blade2 is drained; blade3 has room. db may run nowhere else.
    lab.report(Report::Capacities(vec![capacity("blade2", 8000, Some("evacuated")), capacity("blade3", 8000, None)]));
    let e = lab.c.evacuation().unwrap();
    let web = e.guests.iter().find(|g| g.guest == "web").unwrap();
    let db = e.guests.iter().find(|g| g.guest == "db").unwrap();
    assert_eq!(web.to.as_deref(), Some("blade3"));
    assert_eq!(db.moved, Some(false));
    assert!(db.result.as_deref().unwrap().contains("migrate-to is empty"), "{db:?}");
    let id = web.migration.expect("web's migration started");
    assert_eq!(lab.state("web"), GuestState::Migrating);
    let done = Outcome { result: Ending::Completed, ..Outcome::failed(Phase::Done, "", false) };
    lab.report(Report::MigrationDone { guest: "web".into(), id, outcome: done });
    let e = lab.c.evacuation().unwrap();
    assert!(e.done, "{e:?}");
    assert_eq!(e.guests.iter().find(|g| g.guest == "web").unwrap().moved, Some(true));
    // The blade stays drained until undrained; then it places again.
    assert_eq!(lab.c.drained(), Some("evacuated"));
    assert_eq!(lab.operator(Operator::Undrain), Some(Ok(Answer::done("undrained"))));
    assert!(lab.asked.contains(&Effect::TellDrained(false)));
}

#[test]
fn an_evacuation_runs_at_most_parallel_migrations_at_once() {
    let mut lab = running_web();
    // batch arrives and runs here too: two guests to move, one at a time.
    let (t, _) = lab.peer(Peer::Incoming { guest: "batch".into(), from: "blade2".into(), caps: vec![], release: None });
    lab.report(Report::Listening { guest: "batch".into(), result: Ok(49152), ticket: t });
    let (t, _) = lab.peer(Peer::IncomingResume { guest: "batch".into(), from: "blade2".into() });
    lab.report(Report::Resumed { guest: "batch".into(), result: Ok(()), ticket: t });
    lab.blade.services.borrow_mut().remove("db");
    lab.operator(Operator::Evacuate { parallel: Some(1) });
    lab.report(Report::Capacities(vec![capacity("blade2", 8000, None), capacity("blade3", 8000, None)]));
    let running = |lab: &Lab| lab.asked.iter().filter(|e| matches!(e, Effect::MigrateOut { .. })).count();
    assert_eq!(running(&lab), 1);
    let first = lab.c.evacuation().unwrap().guests.iter().find_map(|g| g.migration).unwrap();
    let (guest, _) =
        lab.c.migration_status(lab.now).iter().map(|m| (m.guest.clone(), m.id)).find(|(_, i)| *i == first).unwrap();
    let failed = Outcome::failed(Phase::Streaming, "stream broke", true);
    lab.report(Report::MigrationDone { guest, id: first, outcome: failed });
    assert_eq!(running(&lab), 2, "the next starts when the first ends");
}

#[test]
fn a_busy_guest_refuses_what_would_make_a_second_copy() {
    let mut lab = running_web();
    migration_id(migrate(&mut lab, "blade2"));
    // An owner check that answers late does not start a copy of a guest that is leaving.
    lab.report(Report::OwnersAnswered { guest: "web".into(), verdict: free(), force: false, ticket: Some(99) });
    let r = Lab::refused(lab.replies.remove(&99));
    assert!(r.message.contains("it is migrating to blade2"), "{r:?}");
    assert_eq!(lab.state("web"), GuestState::Migrating);
    lab.now += Duration::from_secs(1);
    lab.tick();
    assert_eq!(lab.state("web"), GuestState::Migrating);
}

#[test]
fn a_guest_state_reads_its_service_as_an_operator_expects() {
    assert_eq!(guest_state(None, false), GuestState::WaitingForDisks);
    assert_eq!(guest_state(None, true), GuestState::Defined);
    assert_eq!(guest_state(Some(ServiceState::Running), true), GuestState::Running);
    assert_eq!(guest_state(Some(ServiceState::Backoff), true), GuestState::Crashed);
    assert_eq!(guest_state(Some(ServiceState::Exited), true), GuestState::Stopped);
}

#[test]
fn every_guest_is_checked_with_every_other_blade_even_one_that_may_run_nowhere_else() {
    let mut lab = blade1();
    lab.tick();
    // db has no migrate-to: a blade on another configuration version might still run it.
    assert_eq!(lab.asked_owners("db"), Some(vec!["blade2".to_string(), "blade3".to_string()]));
    assert_eq!(lab.state("db"), GuestState::Defined, "not started before the answers");
}

#[test]
fn a_blade_alone_in_its_cluster_starts_its_guests_without_asking_anyone() {
    let one = "[cluster]\nname = \"solo\"\n[nodes.blade1]\n[aliases]\nvm1 = { wwid = \"3600a0001\" }\n\
               [guests.web]\nnode = \"blade1\"\nmemory-mib = 64\ndisks = [{ alias = \"vm1\" }]\n";
    let mut lab = Lab::with(one, "blade1");
    assert!(!lab.asked.contains(&Effect::AskDrain));
    lab.tick();
    assert_eq!(lab.state("web"), GuestState::Running);
    assert!(lab.asked_owners("web").is_none());
}

#[test]
fn a_restart_or_kill_of_a_guest_that_may_run_elsewhere_is_refused() {
    let mut lab = running_web();
    let act = |action| Operator::Guest { name: "web".into(), action, force: false };
    let id = migration_id(migrate(&mut lab, "blade2"));
    for action in [ServiceAction::Restart, ServiceAction::Kill, ServiceAction::Stop] {
        let r = Lab::refused(lab.operator(act(action)));
        assert!(r.message.contains("is migrating to blade2"), "{action:?} while migrating: {r:?}");
    }
    let doubt = Outcome { result: Ending::InDoubt, ..Outcome::failed(Phase::Done, "no answer", false) };
    lab.report(Report::MigrationDone { guest: "web".into(), id, outcome: doubt });
    // The supervisor would cold-boot a killed or restarted copy here while blade2 may run it.
    for action in [ServiceAction::Restart, ServiceAction::Kill, ServiceAction::Stop] {
        let r = Lab::refused(lab.operator(act(action)));
        assert!(r.message.contains("paused here in doubt"), "{action:?} in doubt: {r:?}");
    }
    assert_eq!(lab.blade.services.borrow().get("web"), Some(&ServiceState::Running), "its QEMU was left alone");
    // The override removes the paused copy outright: no restart policy applies.
    let r = lab.operator(Operator::Guest { name: "web".into(), action: ServiceAction::Kill, force: true });
    assert_eq!(r, Some(Ok(Answer::done("the paused copy of web here is removed"))));
    assert!(lab.blade.services.borrow().get("web").is_none());
}

mod ha;
