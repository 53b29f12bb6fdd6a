//! The client half of attested TLS against a real rustls server: the key a connection
//! presents is reported exactly as the agent hashes it, a pinned connection to that key
//! works, and a pinned connection to any other key fails in the handshake before the
//! request leaves the client.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use cvm_agent_client::{self as agent_client, Agent, AgentClientError};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};

/// A TLS 1.3 server answering every request with `{"ok":true}`; returns its address,
/// the SHA-256 of its key's SubjectPublicKeyInfo, and the request heads it received.
fn server() -> (String, [u8; 32], Arc<Mutex<Vec<String>>>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let key_sha256: [u8; 32] =
        Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
    let cert = rcgen::CertificateParams::new(vec!["cvm-agent".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], private)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            if head.is_empty() {
                continue;
            }
            heads
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let body = br#"{"ok":true}"#;
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(body);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (addr, key_sha256, seen)
}

#[test]
fn reports_the_key_and_pins_it() {
    let (addr, key, seen) = server();
    let (v, presented): (serde_json::Value, _) =
        agent_client::get_json_keyed(&Agent::unverified(&addr), "/healthz").unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        presented, key,
        "the client hashes the key as the agent does"
    );

    let pinned = Agent::pinned(&addr, key);
    let v: serde_json::Value = agent_client::get_json(&pinned, "/v1/workloads").unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn another_key_is_refused_before_the_request_is_sent() {
    let (addr, key, seen) = server();
    let mut other = key;
    other[0] ^= 1;
    let err = agent_client::request(
        &Agent::pinned(&addr, other),
        "POST",
        "/v1/workloads",
        b"secret bundle",
        "application/cbor",
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, AgentClientError::Io { .. }), "{err:?}");
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(text.contains("not the attested key"), "{text}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        seen.lock().unwrap().is_empty(),
        "the server received a request"
    );
}
