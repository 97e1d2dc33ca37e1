//! A new alias table against the one in force: which aliases are new, which go, and which must
//! stay because a guest running here still has the LUN open. Pure: the reload executes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::aliases::Alias;

/// An alias removed from the table while a guest here still uses its map: kept (in
/// multipath.conf and in status) until that guest stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub alias: String,
    pub wwid: String,
    /// The guest that uses it.
    pub guest: String,
}

impl Retired {
    pub fn warning(&self) -> String {
        format!(
            "alias {} ({}) was removed from the alias table, but guest {} uses it: its map stays until {} stops",
            self.alias, self.wwid, self.guest, self.guest
        )
    }

    pub fn as_alias(&self) -> Alias {
        Alias { alias: self.alias.clone(), wwid: self.wwid.clone(), paths: None, line: 0 }
    }
}

/// What applying a new table changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Aliases the blade did not have (or that now name another LUN).
    pub added: Vec<Alias>,
    /// Aliases (and their WWIDs) whose maps go: no guest here uses them.
    pub removed: Vec<(String, String)>,
    /// Aliases that go from the table but stay, because a guest here uses them.
    pub retired: Vec<Retired>,
}

/// Compares `new` with the aliases in force (`old` plus those already `retired`). `in_use` maps
/// an alias to the guest running here that uses it. A table that would point an alias in use
/// at another LUN, or give an in-use LUN a second alias, is refused: the last good table stays.
pub fn diff(
    old: &[Alias],
    retired: &[Retired],
    new: &[Alias],
    in_use: &BTreeMap<String, String>,
) -> Result<Change, String> {
    let mut change = Change::default();
    let new_by_alias: BTreeMap<&str, &Alias> = new.iter().map(|a| (a.alias.as_str(), a)).collect();
    let before: Vec<(String, String)> = old
        .iter()
        .map(|a| (a.alias.clone(), a.wwid.clone()))
        .chain(retired.iter().map(|r| (r.alias.clone(), r.wwid.clone())))
        .collect();
    for (alias, wwid) in &before {
        let stays = new_by_alias.get(alias.as_str()).is_some_and(|n| &n.wwid == wwid);
        if stays {
            continue;
        }
        match (in_use.get(alias), new_by_alias.get(alias.as_str())) {
            (Some(guest), Some(n)) => {
                return Err(format!(
                "{}:{}: alias {alias} would name another LUN ({} instead of {wwid}) while guest {guest} uses it here; \
                     stop {guest} first",
                "the new alias table", n.line, n.wwid
            ))
            }
            (Some(guest), None) => {
                if let Some(n) = new.iter().find(|n| &n.wwid == wwid) {
                    return Err(format!(
                        "{}:{}: alias {} would rename LUN {wwid} while guest {guest} uses it here as {alias}; \
                         stop {guest} first",
                        "the new alias table", n.line, n.alias
                    ));
                }
                change.retired.push(Retired { alias: alias.clone(), wwid: wwid.clone(), guest: guest.clone() });
            }
            (None, _) => change.removed.push((alias.clone(), wwid.clone())),
        }
    }
    for n in new {
        if !before.iter().any(|(a, w)| a == &n.alias && w == &n.wwid) {
            change.added.push(n.clone());
        }
    }
    Ok(change)
}

/// What multipath.conf must name: the new table and the retired aliases still in use.
pub fn in_force(table: &[Alias], retired: &[Retired]) -> Vec<Alias> {
    table.iter().cloned().chain(retired.iter().map(Retired::as_alias)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(alias: &str, wwid: &str) -> Alias {
        Alias { alias: alias.into(), wwid: wwid.into(), paths: Some(2), line: 3 }
    }

    fn used(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, g)| (a.to_string(), g.to_string())).collect()
    }

    #[test]
    fn new_aliases_are_added_and_unused_ones_removed() {
        let old = [a("vm1", "3600a"), a("vm2", "3600b")];
        let new = [a("vm1", "3600a"), a("vm3", "Vendor_FF01000033100100")];
        let c = diff(&old, &[], &new, &used(&[])).unwrap();
        assert_eq!(c.added, vec![a("vm3", "Vendor_FF01000033100100")]);
        assert_eq!(c.removed, vec![("vm2".into(), "3600b".into())]);
        assert!(c.retired.is_empty());
        assert_eq!(diff(&new, &[], &new, &used(&[])).unwrap(), Change::default(), "the same table changes nothing");
    }

    #[test]
    fn an_alias_in_use_is_kept_until_its_guest_stops() {
        let old = [a("vm1", "3600a"), a("vm2", "3600b")];
        let new = [a("vm1", "3600a")];
        let c = diff(&old, &[], &new, &used(&[("vm2", "db")])).unwrap();
        assert!(c.removed.is_empty());
        assert_eq!(c.retired, vec![Retired { alias: "vm2".into(), wwid: "3600b".into(), guest: "db".into() }]);
        assert!(c.retired[0].warning().contains("guest db uses it: its map stays until db stops"));
        // Still retired at the next reload while db runs; removed once it stopped.
        let again = diff(&new, &c.retired, &new, &used(&[("vm2", "db")])).unwrap();
        assert_eq!(again.retired, c.retired);
        let later = diff(&new, &c.retired, &new, &used(&[])).unwrap();
        assert_eq!(later.removed, vec![("vm2".into(), "3600b".into())]);
        // Or it comes back into the table: nothing to do.
        let back = diff(&new, &c.retired, &old, &used(&[("vm2", "db")])).unwrap();
        assert_eq!(back, Change::default());
        assert_eq!(in_force(&new, &c.retired).len(), 2, "multipath.conf keeps the retired alias");
    }

    #[test]
    fn an_alias_in_use_cannot_be_pointed_at_another_lun_or_renamed() {
        let old = [a("vm1", "3600a")];
        let e = diff(&old, &[], &[a("vm1", "3600c")], &used(&[("vm1", "web")])).unwrap_err();
        assert!(e.contains("alias vm1 would name another LUN (3600c instead of 3600a) while guest web uses it"), "{e}");
        let e = diff(&old, &[], &[a("web-disk", "3600a")], &used(&[("vm1", "web")])).unwrap_err();
        assert!(e.contains("alias web-disk would rename LUN 3600a while guest web uses it here as vm1"), "{e}");
        // Not in use: the same changes are a removal and an addition.
        let c = diff(&old, &[], &[a("vm1", "3600c")], &used(&[])).unwrap();
        assert_eq!((c.added.len(), c.removed.len()), (1, 1));
    }
}
