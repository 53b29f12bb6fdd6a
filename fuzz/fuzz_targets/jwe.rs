//! JWEs from an untrusted broker (or whoever answers in its place): parsing and
//! decryption with a fixed TEE key of each type.
#![no_main]

use cvm_kbs_client::tee_key::TeeKey;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static [TeeKey; 2] {
    static K: OnceLock<[TeeKey; 2]> = OnceLock::new();
    K.get_or_init(|| {
        [
            TeeKey::generate_p256(),
            TeeKey::generate_rsa(2048).expect("RSA key"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    for key in keys() {
        let _ = key.decrypt(data);
    }
});
