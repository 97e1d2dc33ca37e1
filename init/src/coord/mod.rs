//! The guest coordinator: where each guest of the cluster stands as seen from this blade, and
//! the decisions that move it (place, ask owners, start, migrate out or in, evacuate, resolve).

pub mod evacuation;
pub mod owner;

use crate::proto::GuestState;
use crate::supervisor::ServiceState;

/// What an operator calls a guest's state.
pub fn guest_state(service: Option<ServiceState>, disks_ready: bool) -> GuestState {
    match service {
        None if !disks_ready => GuestState::WaitingForDisks,
        None => GuestState::Defined,
        Some(ServiceState::Waiting) | Some(ServiceState::Starting) => GuestState::Starting,
        Some(ServiceState::Running) => GuestState::Running,
        Some(ServiceState::Backoff) => GuestState::Crashed,
        Some(ServiceState::Stopping) => GuestState::Stopping,
        Some(ServiceState::Exited) | Some(ServiceState::Stopped) => GuestState::Stopped,
        Some(ServiceState::Failed) => GuestState::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_state_reads_its_service_as_an_operator_expects() {
        assert_eq!(guest_state(None, false), GuestState::WaitingForDisks);
        assert_eq!(guest_state(None, true), GuestState::Defined);
        assert_eq!(guest_state(Some(ServiceState::Running), true), GuestState::Running);
        assert_eq!(guest_state(Some(ServiceState::Backoff), true), GuestState::Crashed);
        assert_eq!(guest_state(Some(ServiceState::Exited), true), GuestState::Stopped);
    }
}
