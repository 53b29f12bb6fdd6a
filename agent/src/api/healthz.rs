//! `GET /healthz`.

use cvm_proto::agent::Health;
use hyper::{Response, StatusCode};

use super::{Body, json};

pub fn get() -> Response<Body> {
    json(
        StatusCode::OK,
        &Health {
            status: "ok".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
}
