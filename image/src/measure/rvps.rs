//! Reference values in the form Trustee's Reference Value Provider Service registers:
//! a message `{"version":"0.1.0","type":"sample","payload":<base64 JSON>}` whose payload
//! maps each reference-value name to its accepted values. The names are the ones
//! Trustee's default attestation policy queries (`snp_launch_measurement`, `mr_td`) and,
//! for vTPM PCRs, `tpm_pcr<N>` (as its `tpm_pcr11`).
//!
//! The `sample` provenance carries no signature: the RVPS trusts whoever registers it,
//! so register it over an authenticated channel.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

/// The RVPS message format version.
pub const MESSAGE_VERSION: &str = "0.1.0";

/// An RVPS registration message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RvpsMessage {
    /// Always [`MESSAGE_VERSION`].
    pub version: String,
    /// The provenance type: `sample`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Standard base64 of the JSON map of names to accepted values.
    pub payload: String,
}

/// A `sample` message for `values` (name → accepted values, lower-case hex).
pub fn sample_message(values: &BTreeMap<String, Vec<String>>) -> RvpsMessage {
    // Serialising a map of strings cannot fail.
    let json = serde_json::to_vec(values).unwrap_or_default();
    RvpsMessage {
        version: MESSAGE_VERSION.to_owned(),
        kind: "sample".to_owned(),
        payload: STANDARD.encode(json),
    }
}

/// The name of a vTPM PCR's reference value.
pub fn tpm_pcr_name(index: u32) -> String {
    format!("tpm_pcr{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_base64_json_of_the_values() {
        let mut v = BTreeMap::new();
        v.insert(tpm_pcr_name(4), vec!["ab".to_owned()]);
        v.insert("mr_td".to_owned(), vec!["cd".to_owned(), "ef".to_owned()]);
        let m = sample_message(&v);
        assert_eq!((m.version.as_str(), m.kind.as_str()), ("0.1.0", "sample"));
        let back: BTreeMap<String, Vec<String>> =
            serde_json::from_slice(&STANDARD.decode(&m.payload).unwrap()).unwrap();
        assert_eq!(back, v);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], "sample");
    }
}
