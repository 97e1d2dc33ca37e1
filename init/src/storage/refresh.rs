//! The served alias file, picked up without anyone logging in to each blade: with
//! `[storage] aliases-refresh-s`, the blade asks for the file again every so often, as a
//! conditional GET (`If-None-Match` / `If-Modified-Since`: an unchanged file is a 304 and costs
//! nothing; a server that sends no validators is compared by content), and applies a changed
//! one exactly as `reload-aliases` does. A file that is refused (it does not parse, or it would
//! change a LUN a running guest uses) keeps the last good table in force and says why in
//! `status` until a good file replaces it.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{aliases, lock, reload, Shared};
use crate::config::fetch::{get_if_changed, Fetched, Validators, MAX_ALIASES_BYTES};

/// What the refresher remembers of the file it last saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub validators: Validators,
    pub digest: Option<u64>,
}

/// What to do after one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Unchanged,
    Changed(String),
    /// The fetch failed: the table in force stays; say so.
    Unreachable(String),
}

fn digest(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Decides from one fetch's outcome, remembering what was seen.
pub fn step(seen: &mut Seen, fetched: Result<Fetched, String>) -> Step {
    match fetched {
        Ok(Fetched::NotModified) => Step::Unchanged,
        Ok(Fetched::Body { text, validators }) => {
            seen.validators = validators;
            let d = digest(&text);
            if seen.digest.replace(d) == Some(d) {
                Step::Unchanged
            } else {
                Step::Changed(text)
            }
        }
        Err(e) => Step::Unreachable(e),
    }
}

/// Applies a changed file; the problem to show while it stands, or None once applied. A file
/// whose table is the one in force (the file boot or a reload applied) changes nothing.
pub fn apply(shared: &Shared, url: &str, text: &str) -> Option<String> {
    let kept = || format!("the table from {} stays in force", lock(shared).table_source);
    match aliases::parse(std::path::Path::new(url), text) {
        Err(e) => Some(format!("alias refresh: {e}; {}", kept())),
        Ok((_, table)) if same(&table, &lock(shared).table) => None,
        Ok((format, table)) => match reload::apply_table(shared, table, format!("fetched from {url} ({format:?})")) {
            Ok(r) => {
                info!("alias refresh: {}", r.message);
                None
            }
            Err(e) => Some(format!("alias refresh: {e}; {}", kept())),
        },
    }
}

/// Two tables name the same LUNs the same way (where in the file does not matter).
fn same(a: &[aliases::Alias], b: &[aliases::Alias]) -> bool {
    let key = |t: &[aliases::Alias]| {
        let mut k: Vec<(String, String, Option<u32>)> =
            t.iter().map(|x| (x.alias.clone(), x.wwid.clone(), x.paths)).collect();
        k.sort();
        k
    };
    key(a) == key(b)
}

/// Refreshes the table from `url` every `every`, for the life of the blade.
pub fn run(shared: Shared, url: String, every: Duration) {
    crate::spawn_worker("aliases-refresh", move || {
        let mut seen = Seen::default();
        loop {
            std::thread::sleep(every);
            let deadline = Instant::now() + Duration::from_secs(30).min(every);
            let fetched = get_if_changed(&url, deadline, MAX_ALIASES_BYTES, &seen.validators);
            let problem = match step(&mut seen, fetched) {
                Step::Unchanged => continue,
                Step::Changed(text) => apply(&shared, &url, &text),
                Step::Unreachable(e) => Some(format!("alias refresh: cannot fetch {e}; the table in force stays")),
            };
            let mut s = lock(&shared);
            if s.refresh_problem != problem {
                match &problem {
                    Some(p) => error!("{p}"),
                    None if s.refresh_problem.is_some() => warn!("alias refresh: the served file is good again"),
                    None => {}
                }
                s.refresh_problem = problem;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str, etag: &str) -> Result<Fetched, String> {
        Ok(Fetched::Body { text: text.into(), validators: Validators { etag: Some(etag.into()), last_modified: None } })
    }

    #[test]
    fn an_unchanged_file_is_not_applied_again() {
        let mut seen = Seen::default();
        assert_eq!(step(&mut seen, body("vm1 3600a\n", "\"1\"")), Step::Changed("vm1 3600a\n".into()));
        assert_eq!(seen.validators.etag.as_deref(), Some("\"1\""), "sent back as If-None-Match next time");
        assert_eq!(step(&mut seen, Ok(Fetched::NotModified)), Step::Unchanged);
        // A server without validators sends the same file again: compared by content.
        assert_eq!(step(&mut seen, body("vm1 3600a\n", "\"2\"")), Step::Unchanged);
        assert_eq!(
            step(&mut seen, body("vm1 3600a\nvm2 3600b\n", "\"3\"")),
            Step::Changed("vm1 3600a\nvm2 3600b\n".into())
        );
        assert!(matches!(step(&mut seen, Err("refused".into())), Step::Unreachable(e) if e == "refused"));
    }

    #[test]
    fn a_refused_file_keeps_the_last_good_table_and_says_why() {
        let t = tempfile::tempdir().unwrap();
        let shared: Shared = std::sync::Arc::new(std::sync::Mutex::new(super::super::Storage {
            multipath_conf: t.path().join("multipath.conf"),
            ..Default::default()
        }));
        assert_eq!(apply(&shared, "http://deploy/aliases", "vm1 3600a\n"), None);
        assert_eq!(lock(&shared).table.len(), 1);
        // The same table again (reformatted): nothing is reloaded.
        assert_eq!(apply(&shared, "http://deploy/aliases", "# the same\n\nvm1 3600A\n"), None);
        assert_eq!(lock(&shared).table[0].line, 1, "the table in force was not replaced");
        let p = apply(&shared, "http://deploy/aliases", "vm1 3600a\nvm1 3600b\n").expect("refused");
        assert!(p.contains("http://deploy/aliases:2: alias vm1 is defined twice"), "{p}");
        assert!(p.ends_with("the table from fetched from http://deploy/aliases (Bindings) stays in force"), "{p}");
        assert_eq!(lock(&shared).table[0].wwid, "3600a", "the last good table is in force");
    }
}
