//! Whatever a client sends the broker: `/auth` and `/attest` bodies, resource paths,
//! init-data, admin bodies, and evidence of every TEE through its verifier (with an
//! empty reference set, a fixed report data and the sample TEE allowed).
#![no_main]

use cvm_broker::kbs::{parse_attest, parse_auth};
use cvm_broker::reference::{Reference, ReferenceSet};
use cvm_broker::resource_path::ResourcePath;
use cvm_broker::verify::{VerifyContext, verify};
use cvm_kbs_client::initdata::InitData;
use kbs_types::Tee;
use libfuzzer_sys::fuzz_target;

const TEES: [Tee; 6] = [
    Tee::Tpm,
    Tee::Snp,
    Tee::Tdx,
    Tee::AzSnpVtpm,
    Tee::AzTdxVtpm,
    Tee::Sample,
];

fuzz_target!(|data: &[u8]| {
    let _ = parse_auth(data);
    if let Ok(a) = parse_attest(data) {
        let _ = cvm_kbs_client::report_data::runtime_data_digest(
            &a.runtime_data.nonce,
            &a.runtime_data.tee_pubkey,
            &a.tee_evidence.additional_evidence,
        );
    }
    let text = String::from_utf8_lossy(data);
    let _ = ResourcePath::parse(&text);
    let init = InitData::parse(&text).ok();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = Reference::from_json("fuzz", &value);
        let references = ReferenceSet::default();
        let ctx = VerifyContext {
            references: &references,
            ak_challenge: None,
            trusted_aks: &[],
            tdx_collateral: None,
            allow_sample: true,
            now: 1_800_000_000,
        };
        for tee in TEES {
            let _ = verify(tee, &value, &[0u8; 48], init.as_ref(), &ctx);
        }
    }
});
