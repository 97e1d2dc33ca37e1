//! The restart decision: pure, so every branch is unit-tested without a process in sight.

use std::time::Duration;

use crate::config::services::{Backoff, RestartPolicy};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start again after `delay`; this is restart number `streak` of the current run of failures.
    Restart { delay: Duration, streak: u32 },
    /// The policy says this exit is final (a clean exit under on-failure, or never).
    Done,
    /// Too many restarts without a healthy run: mark failed, stop trying.
    GiveUp { streak: u32 },
}

/// Decides what follows an exit. `ran_for` is how long the process lived; `streak` is how many
/// restarts came before it without a healthy run in between.
pub fn decide(policy: RestartPolicy, backoff: &Backoff, exit: Exit, ran_for: Duration, streak: u32) -> Decision {
    let restart = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.success(),
        RestartPolicy::Never => false,
    };
    if !restart {
        return Decision::Done;
    }
    // A process that stayed up past the reset time was healthy: its failures start over.
    let streak = if ran_for.as_secs_f64() >= backoff.reset_after_s { 1 } else { streak + 1 };
    if backoff.give_up_after > 0 && streak > backoff.give_up_after {
        return Decision::GiveUp { streak: streak - 1 };
    }
    Decision::Restart { delay: backoff.delay(streak), streak }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff { initial_s: 1.0, factor: 2.0, max_s: 5.0, reset_after_s: 60.0, give_up_after: 3 }
    }
    const SHORT: Duration = Duration::from_secs(1);

    #[test]
    fn always_restarts_even_after_a_clean_exit() {
        assert_eq!(
            decide(RestartPolicy::Always, &b(), Exit::Code(0), SHORT, 0),
            Decision::Restart { delay: Duration::from_secs(1), streak: 1 }
        );
    }

    #[test]
    fn on_failure_restarts_only_failures() {
        assert_eq!(decide(RestartPolicy::OnFailure, &b(), Exit::Code(0), SHORT, 0), Decision::Done);
        assert!(matches!(decide(RestartPolicy::OnFailure, &b(), Exit::Code(3), SHORT, 0), Decision::Restart { .. }));
        assert!(matches!(decide(RestartPolicy::OnFailure, &b(), Exit::Signal(9), SHORT, 0), Decision::Restart { .. }));
    }

    #[test]
    fn never_means_never() {
        assert_eq!(decide(RestartPolicy::Never, &b(), Exit::Signal(11), SHORT, 0), Decision::Done);
    }

    #[test]
    fn delays_grow_then_the_service_is_given_up() {
        let mut streak = 0;
        let mut delays = vec![];
        loop {
            match decide(RestartPolicy::Always, &b(), Exit::Code(1), SHORT, streak) {
                Decision::Restart { delay, streak: s } => {
                    delays.push(delay.as_secs());
                    streak = s;
                }
                Decision::GiveUp { streak: s } => {
                    assert_eq!(s, 3);
                    break;
                }
                Decision::Done => panic!("always must not be done"),
            }
        }
        assert_eq!(delays, vec![1, 2, 4]);
    }

    #[test]
    fn a_long_healthy_run_resets_the_streak() {
        let d = decide(RestartPolicy::Always, &b(), Exit::Code(1), Duration::from_secs(61), 3);
        assert_eq!(d, Decision::Restart { delay: Duration::from_secs(1), streak: 1 });
    }

    #[test]
    fn zero_means_never_give_up() {
        let backoff = Backoff { give_up_after: 0, ..b() };
        assert_eq!(
            decide(RestartPolicy::Always, &backoff, Exit::Code(1), SHORT, 1000),
            Decision::Restart { delay: Duration::from_secs(5), streak: 1001 }
        );
    }

    #[test]
    fn exits_read_like_operators_expect() {
        assert_eq!(Exit::Code(2).to_string(), "exit code 2");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
    }
}
