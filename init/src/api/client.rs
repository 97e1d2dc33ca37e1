//! The client side of the route table: a [`Request`] sent to a blade (its control socket or its
//! network API), its answer read as the type the caller expects, a refusal as the blade's own
//! message with its HTTP code. What the CLI and the peer client both use.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::httpc::{call_with_body, Endpoint};
use crate::proto::request::Request;

/// Why a call did not give the expected answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No answer (connection refused, timeout, a malformed answer).
    Unreachable(String),
    /// The blade answered with an error: its HTTP code and message.
    Refused { code: u16, message: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => f.write_str(e),
            CallError::Refused { code, message } => write!(f, "{message} (HTTP {code})"),
        }
    }
}

/// Sends `req` (with the token only where the route needs it) and reads its answer as `T`.
pub fn send<T: DeserializeOwned>(
    ep: &Endpoint,
    req: &Request,
    token: Option<&str>,
    timeout: Duration,
) -> Result<T, CallError> {
    let token = token.filter(|_| req.needs_token());
    let body = req.body().unwrap_or_default();
    let r = call_with_body(ep, req.method(), &req.target(), token, &body, timeout).map_err(CallError::Unreachable)?;
    if !(200..300).contains(&r.code) {
        let message = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(r.body);
        return Err(CallError::Refused { code: r.code, message });
    }
    serde_json::from_str(&r.body).map_err(|e| {
        let shown = crate::config::error::shorten(&r.body, 200);
        CallError::Unreachable(format!("{ep}: an answer this version does not read ({e}): {shown}"))
    })
}
