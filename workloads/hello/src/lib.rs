//! The example sealed workload: a `wasi:http` service whose state lives in the
//! preopened folder `/data` (on the appliance's encrypted volume).
//!
//! - `GET /` — a greeting (`GREETING` from the policy's env) and the visit count, kept
//!   in `/data/visits` (replaced atomically on each visit).
//! - `POST /notes` — append the body (UTF-8, at most 4 KiB) as a line of
//!   `/data/notes.txt`; `GET /notes` — list them.
//! - `GET /healthz` — `ok`.

use std::io::Write as _;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(Hello);

struct Hello;

const MAX_NOTE: usize = 4096;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, text) = match (request.method(), path.as_str()) {
            (Method::Get, "/healthz") => (200, "ok\n".to_owned()),
            (Method::Get, "/") => visit(),
            (Method::Get, "/notes") => notes(),
            (Method::Post, "/notes") => match body(request) {
                Ok(note) => add_note(&note),
                Err(e) => (400, format!("{e}\n")),
            },
            (_, "/" | "/notes" | "/healthz") => (405, "method not allowed\n".to_owned()),
            _ => (404, format!("no such page {path}\n")),
        };
        respond(out, status, &text);
    }
}

fn visit() -> (u16, String) {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_owned());
    let visits = std::fs::read_to_string("/data/visits")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    // Write then rename: a crash mid-write leaves the old count, never a torn one.
    let saved = std::fs::write("/data/visits.tmp", visits.to_string())
        .and_then(|()| std::fs::rename("/data/visits.tmp", "/data/visits"));
    match saved {
        Ok(()) => (
            200,
            format!("{greeting} from a sealed workload, visit {visits}\n"),
        ),
        Err(e) => (500, format!("cannot save the visit count: {e}\n")),
    }
}

fn notes() -> (u16, String) {
    match std::fs::read_to_string("/data/notes.txt") {
        Ok(s) => (200, s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (200, String::new()),
        Err(e) => (500, format!("cannot read notes: {e}\n")),
    }
}

fn add_note(note: &str) -> (u16, String) {
    if note.trim().is_empty() || note.contains('\n') {
        return (400, "a note is one non-empty line\n".to_owned());
    }
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/data/notes.txt")
        .and_then(|mut f| {
            f.write_all(format!("{}\n", note.trim()).as_bytes())?;
            f.sync_all()
        });
    match appended {
        Ok(()) => (201, "saved\n".to_owned()),
        Err(e) => (500, format!("cannot save the note: {e}\n")),
    }
}

fn body(request: IncomingRequest) -> Result<String, String> {
    let body = request.consume().map_err(|()| "request body unavailable")?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| "request body unavailable")?;
        loop {
            match stream.blocking_read(1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(format!("reading the body failed: {}", e.to_debug_string()));
                }
            }
            if bytes.len() > MAX_NOTE {
                return Err(format!("a note is at most {MAX_NOTE} bytes"));
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| "a note is UTF-8 text".to_owned())
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(status);
    let Ok(body) = resp.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(mut stream) = body.write() {
        let _ = stream.write_all(text.as_bytes());
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}
