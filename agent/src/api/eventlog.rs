//! `GET /v1/eventlog`.

use std::error::Error as _;

use hyper::{Response, StatusCode};
use tracing::warn;

use super::{Body, error, json};
use crate::AgentState;
use crate::measurements;

pub fn get(state: &AgentState) -> Response<Body> {
    match measurements::read(&state.eventlog, &state.sysfs) {
        Ok(r) => json(StatusCode::OK, &r),
        Err(e) => {
            let detail = match e.source() {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            };
            warn!(error = %detail, "event log unavailable");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "EventLogUnavailable",
                detail,
            )
        }
    }
}
