//! Launch measurements computed offline, from the same bytes the VMM loads.

pub mod snp;
pub mod tdx;
