//! Dependency order: which services start first, and (reversed) which stop first.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::ServiceSpec;

/// Names in an order where every service comes after all it depends on. Of the services that
/// may come next, the one the most others wait for (directly or through others) comes first:
/// starting a process costs time (a fork of PID 1 and its cgroup), and udevd, which the coldplug
/// and multipathd wait for, should not wait behind services nobody waits for. Then by name, so
/// the order is stable. Unknown dependencies are ignored here; the config parser refuses them.
/// On a cycle, returns the names along it, first name repeated at the end.
pub fn start_order(specs: &[ServiceSpec]) -> Result<Vec<String>, Vec<String>> {
    let known: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let deps: BTreeMap<&str, Vec<&str>> = specs
        .iter()
        .map(|s| {
            let d = s.after.iter().map(String::as_str).filter(|d| known.contains(d)).collect();
            (s.name.as_str(), d)
        })
        .collect();
    let waiting = waiting_on(&deps);
    let mut order: Vec<String> = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < deps.len() {
        let next = deps
            .iter()
            .filter(|(name, d)| !done.contains(*name) && d.iter().all(|x| done.contains(x)))
            .map(|(name, _)| *name)
            .min_by_key(|name| (std::cmp::Reverse(waiting.get(name).copied().unwrap_or(0)), *name));
        match next {
            Some(n) => {
                done.insert(n);
                order.push(n.to_string());
            }
            None => return Err(find_cycle(&deps, &done)),
        }
    }
    Ok(order)
}

/// For each service, how many others wait for it, directly or through others (on a cycle, the
/// walk stops where it has been).
fn waiting_on<'a>(deps: &BTreeMap<&'a str, Vec<&'a str>>) -> BTreeMap<&'a str, usize> {
    deps.keys()
        .map(|&root| {
            let mut seen: BTreeSet<&str> = BTreeSet::new();
            let mut todo = vec![root];
            while let Some(cur) = todo.pop() {
                for (&name, d) in deps {
                    if d.contains(&cur) && seen.insert(name) {
                        todo.push(name);
                    }
                }
            }
            seen.remove(root);
            (root, seen.len())
        })
        .collect()
}

/// Walks dependencies from an unfinished service until a name repeats.
fn find_cycle(deps: &BTreeMap<&str, Vec<&str>>, done: &BTreeSet<&str>) -> Vec<String> {
    let start = deps.keys().find(|n| !done.contains(*n)).copied().unwrap_or_default();
    let mut path: Vec<&str> = vec![start];
    loop {
        let cur = *path.last().unwrap_or(&start);
        let Some(next) = deps.get(cur).and_then(|d| d.iter().find(|x| !done.contains(*x))) else {
            return path.iter().map(|s| s.to_string()).collect();
        };
        if let Some(pos) = path.iter().position(|p| p == next) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(next.to_string());
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, after: &[&str]) -> ServiceSpec {
        let mut s: ServiceSpec = toml::from_str("argv = [\"/bin/true\"]").unwrap();
        s.name = name.into();
        s.after = after.iter().map(|a| a.to_string()).collect();
        s
    }

    #[test]
    fn dependencies_start_first() {
        let specs = [
            spec("guests", &["multipathd", "net"]),
            spec("multipathd", &["udevd"]),
            spec("udevd", &[]),
            spec("net", &[]),
        ];
        assert_eq!(start_order(&specs).unwrap(), vec!["udevd", "multipathd", "net", "guests"]);
    }

    #[test]
    fn what_others_wait_for_starts_before_what_nobody_waits_for() {
        let specs = [
            spec("loopback", &[]),
            spec("modules", &[]),
            spec("udev-trigger", &["udevd"]),
            spec("udevd", &[]),
            spec("guest-web", &["bridge"]),
            spec("bridge", &[]),
        ];
        assert_eq!(
            start_order(&specs).unwrap(),
            vec!["bridge", "udevd", "guest-web", "loopback", "modules", "udev-trigger"]
        );
    }

    #[test]
    fn cycles_are_reported_along_their_path() {
        let specs = [spec("a", &["b"]), spec("b", &["c"]), spec("c", &["a"]), spec("d", &[])];
        assert_eq!(start_order(&specs).unwrap_err(), vec!["a", "b", "c", "a"]);
        let specs = [spec("a", &["a"])];
        assert_eq!(start_order(&specs).unwrap_err(), vec!["a", "a"]);
    }

    #[test]
    fn a_service_behind_a_cycle_reports_the_cycle_itself() {
        let specs = [spec("a", &["b"]), spec("b", &["c"]), spec("c", &["b"])];
        assert_eq!(start_order(&specs).unwrap_err(), vec!["b", "c", "b"]);
    }
}
