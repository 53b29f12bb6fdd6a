//! Intel TDX evidence: a TD quote (version 4 or 5, signed by the quoting enclave whose
//! PCK certificate chains to Intel's root) and the CC event log of RTMR extends, in
//! Trustee's `tdx` evidence format. Verification (feature `verifier`) is in
//! [`verifier`].

pub mod attester;
#[cfg(feature = "verifier")]
pub mod verifier;

use serde::{Deserialize, Serialize};

/// Evidence of the `tdx` TEE, as Trustee's TDX verifier reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxEvidence {
    /// The CCEL event log (standard base64), when the firmware published one.
    pub cc_eventlog: Option<String>,
    /// The quote, standard base64.
    pub quote: String,
}
