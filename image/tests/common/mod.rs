//! Shared by the oracle tests.

use std::path::PathBuf;

/// The image the test suite built (`./scripts/test` sets `CVM_TEST_IMAGE`).
pub fn test_image() -> Option<PathBuf> {
    let dir = std::env::var_os("CVM_TEST_IMAGE").map(PathBuf::from);
    if dir.is_none() {
        eprintln!("skipped: set CVM_TEST_IMAGE to an image folder (./scripts/test does)");
    }
    dir
}
