//! The `wasi:http` glue: one instance per request, which reads the request, hands it to
//! [`crate::api::handle`] with `/data` as the records' folder, and writes the JSON reply.

use std::io::Write as _;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

use crate::api::{self, Context, Request, Response};

wasip2::http::proxy::export!(BadgeRequest);

struct BadgeRequest;

impl Guest for BadgeRequest {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let response = serve(request);
        respond(out, &response);
    }
}

fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    let first = values.first()?;
    String::from_utf8(first.clone()).ok()
}

fn serve(request: IncomingRequest) -> Response {
    let method = match request.method() {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        _ => "OTHER",
    };
    let path = request.path_with_query().unwrap_or_default();
    let authorization = header(&request, "authorization");
    let body = match read_body(request) {
        Ok(b) => b,
        Err((status, msg)) => {
            return Response {
                status,
                body: serde_json::json!({ "error": msg }),
            };
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ctx = Context {
        sites: crate::sites(std::env::var("SITES").ok().as_deref()),
        now,
        caller_key: crate::caller::CallerKey::parse(std::env::var("CALLER_KEY").ok().as_deref()),
    };
    api::handle(
        std::path::Path::new("/data"),
        &ctx,
        &Request {
            method,
            path: &path,
            authorization: authorization.as_deref(),
            body: &body,
        },
    )
}

fn read_body(request: IncomingRequest) -> Result<Vec<u8>, (u16, String)> {
    let unavailable = || (400, "request body unavailable".to_owned());
    let body = request.consume().map_err(|()| unavailable())?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| unavailable())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err((
                        400,
                        format!("reading the body failed: {}", e.to_debug_string()),
                    ));
                }
            }
            if bytes.len() > api::MAX_BODY {
                return Err((
                    413,
                    format!("request body is larger than {} bytes", api::MAX_BODY),
                ));
            }
        }
    }
    Ok(bytes)
}

fn respond(out: ResponseOutparam, response: &Response) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(response.status);
    let Ok(body) = resp.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(resp));
    let mut text = serde_json::to_vec(&response.body).unwrap_or_default();
    text.push(b'\n');
    if let Ok(mut stream) = body.write() {
        // blocking_write_and_flush takes at most 4 KiB at a time.
        for chunk in text.chunks(4096) {
            if stream.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}
