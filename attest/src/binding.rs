//! Report data for TEEs without a runtime register the guest can extend (SEV-SNP; TDX
//! before Linux 6.16 exposes RTMR3): the runtime event log goes into the report itself.
//! The guest asks for a report over `runtime_report_data(nonce, log)` and returns the
//! log with it; the verifier recomputes the value from the nonce it chose and the log it
//! received, so the log cannot be swapped and the report cannot be replayed.

use sha2::{Digest as _, Sha256, Sha512};

use crate::eventlog::EventLog;

/// Domain separation for this binding's hash.
const DOMAIN: &[u8] = b"cvm runtime log report data v1\0";

/// SHA-512(domain ‖ len(nonce) as u32 BE ‖ nonce ‖ the log's JSON): 64 bytes, the size
/// of an SNP or TDX report-data field.
pub fn runtime_report_data(nonce: &[u8], log: &EventLog) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(DOMAIN);
    h.update(u32::try_from(nonce.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(nonce);
    // The log's JSON form is canonical: fixed field order, no maps, no floats.
    h.update(serde_json::to_vec(log).unwrap_or_default());
    h.finalize().into()
}

/// Domain separation for the attested-TLS binding.
const TLS_DOMAIN: &[u8] = b"cvm attested tls v1\0";

/// The nonce a guest puts in its evidence when a client asks over TLS: SHA-256(domain ‖
/// SHA-256 of the server's SubjectPublicKeyInfo ‖ the client's nonce). A client that
/// checks evidence against this value knows the TLS key it is talking to was in the
/// attested guest when the evidence was made, and that the evidence is fresh.
pub fn tls_key_nonce(spki_sha256: &[u8; 32], nonce: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TLS_DOMAIN);
    h.update(spki_sha256);
    h.update(nonce);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digests;
    use crate::eventlog::{EventContent, EventKind};
    use crate::register::RegisterId;

    fn log(subject: &str) -> EventLog {
        let mut l = EventLog::new(RegisterId::None);
        l.append(
            15,
            &Digests::of(b"x"),
            EventContent {
                kind: EventKind::InitBinary,
                subject: subject.into(),
            },
        );
        l
    }

    #[test]
    fn binds_nonce_and_log() {
        let a = runtime_report_data(b"nonce", &log("/init"));
        assert_eq!(a, runtime_report_data(b"nonce", &log("/init")));
        assert_ne!(a, runtime_report_data(b"nonce2", &log("/init")));
        assert_ne!(a, runtime_report_data(b"nonce", &log("/other")));
        // A log that round-trips through JSON gives the same value (the verifier side).
        let back: EventLog =
            serde_json::from_slice(&serde_json::to_vec(&log("/init")).unwrap()).unwrap();
        assert_eq!(a, runtime_report_data(b"nonce", &back));
    }

    #[test]
    fn tls_nonce_binds_key_and_nonce() {
        let a = tls_key_nonce(&[1; 32], b"nonce");
        assert_eq!(a, tls_key_nonce(&[1; 32], b"nonce"));
        assert_ne!(a, tls_key_nonce(&[2; 32], b"nonce"));
        assert_ne!(a, tls_key_nonce(&[1; 32], b"nonce2"));
    }
}
