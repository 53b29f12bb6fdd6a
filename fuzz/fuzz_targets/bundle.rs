//! Sealed bundles from whoever uploads one: parsing, signature verification against a
//! fixed trusted owner of each algorithm, and opening with a fixed content key.
#![no_main]

use std::sync::OnceLock;

use cvm_runtime::bundle::owner::{OwnerAlg, OwnerKey, OwnerKeys};
use cvm_runtime::bundle::parse;
use libfuzzer_sys::fuzz_target;

fn trusted() -> &'static OwnerKeys {
    static K: OnceLock<OwnerKeys> = OnceLock::new();
    K.get_or_init(|| {
        OwnerKeys::new(vec![
            OwnerKey::generate(OwnerAlg::EdDsa).public(),
            OwnerKey::generate(OwnerAlg::Es256).public(),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse(data) {
        let _ = parsed.owner_kid();
        if let Ok(verified) = parsed.verify(trusted()) {
            let _ = verified.open(&[7u8; 32]);
        }
    }
    let _ = cvm_runtime::policy::WorkloadPolicy::from_yaml(&String::from_utf8_lossy(data));
});
