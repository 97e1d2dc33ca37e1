//! Dependency order: which services start first, and (reversed) which stop first.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::ServiceSpec;

/// Names in an order where every service comes after all it depends on (ties by name, so the
/// order is stable). Unknown dependencies are ignored here; the config parser refuses them.
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
    let mut order: Vec<String> = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < deps.len() {
        let next = deps
            .iter()
            .find(|(name, d)| !done.contains(*name) && d.iter().all(|x| done.contains(x)))
            .map(|(name, _)| *name);
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
        assert_eq!(start_order(&specs).unwrap(), vec!["net", "udevd", "multipathd", "guests"]);
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
