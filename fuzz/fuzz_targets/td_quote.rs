//! TD quotes from an untrusted guest: parsing, and the full offline verification
//! against the sample collateral (signature chains, QE report, TCB matching).
#![no_main]

use cvm_attest::tdx::verifier::{QuoteCollateralV3, TdxPolicy, parse_quote, verify_tdx};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn collateral() -> &'static QuoteCollateralV3 {
    static C: OnceLock<QuoteCollateralV3> = OnceLock::new();
    C.get_or_init(|| {
        serde_json::from_str(include_str!(
            "../../attest/tests/data/tdx/tdx_quote_collateral.json"
        ))
        .expect("sample collateral")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_quote(data);
    // A fixed time inside the sample collateral's validity.
    let _ = verify_tdx(data, collateral(), 1_700_000_000, &TdxPolicy::default());
});
