//! TD quotes from an untrusted guest: parsing, and the full offline verification
//! against the sample collateral (signature chains, QE report, TCB matching).
#![no_main]

use cvm_attest::tdx::verifier::{
    QuoteCollateralV3, TdxPolicy, collateral_next_update, parse_quote, verify_tdx,
};
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
    // A time inside the sample collateral's validity, so the checks go deep.
    let now = collateral_next_update(collateral())
        .unwrap_or(0)
        .saturating_sub(86_400);
    let _ = verify_tdx(data, collateral(), now, &TdxPolicy::default());
});
