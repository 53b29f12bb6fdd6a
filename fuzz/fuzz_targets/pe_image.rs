//! Files `cvm measure` hashes: a PE image (Authenticode) and a newc initramfs.
#![no_main]

use cvm_image::cpio::read_files;
use cvm_image::measure::authenticode::authenticode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = authenticode::<sha2::Sha256>(data);
    let _ = read_files(data);
});
