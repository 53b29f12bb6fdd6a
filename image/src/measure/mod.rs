//! Launch measurements computed offline, from the same bytes the VMM loads.

pub mod authenticode;
pub mod qemu;
pub mod runtime;
pub mod rvps;
pub mod snp;
pub mod tdx;
pub mod uki;
