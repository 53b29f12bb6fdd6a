//! Firmware images from an untrusted source: GUID table, SEV metadata, TDVF sections,
//! and the launch measurements computed from them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cvm_ovmf::parse_sev(data);
    let _ = cvm_ovmf::parse_tdx(data);
    let _ =
        cvm_image::measure::tdx::measure_mrtd(data, cvm_image::measure::tdx::PageOrder::SinglePass);
});
