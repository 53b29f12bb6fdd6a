//! `GET /v1/state`: whether the encrypted state volume is mounted, PID1's record on
//! it, and the names (never the values) of the secrets PID1 handed over.

use cvm_proto::agent::StateStatus;
use hyper::{Response, StatusCode};

use super::{Body, error, json};
use crate::AgentState;

/// PID1's record, relative to the state volume's root.
const RECORD: &str = "cvm/state.json";

pub fn get(state: &AgentState) -> Response<Body> {
    let record = match &state.state_dir {
        None => None,
        Some(dir) => {
            let path = dir.join(RECORD);
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(v) => Some(v),
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "StateUnreadable",
                        format!("{}: {e}", path.display()),
                    );
                }
            }
        }
    };
    json(
        StatusCode::OK,
        &StateStatus {
            mounted: state.state_dir.is_some(),
            record,
            secrets: state.secrets.names(),
            owners: state.owners.kids().iter().map(hex::encode).collect(),
        },
    )
}
