//! A TPM 2.0 PCR as the runtime measurement register, through tss-esapi.
//!
//! Works against `/dev/tpmrm0` in the guest and against swtpm on the host (TCTI
//! `swtpm:host=…,port=…`). Extends every allocated bank we can compute (sha256, sha384);
//! other banks (sha1, sm3) are left alone, so verifiers must read the sha256 bank.

use std::str::FromStr as _;

use tss_esapi::Context;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Digest, DigestValues, PcrSelectionListBuilder, PcrSlot,
};
use tss_esapi::tcti_ldr::TctiNameConf;

use super::{MeasurementRegister, RegisterError, RegisterId};
use crate::digest::{Digests, HashAlg};

/// Highest PCR index of a PC-client TPM.
const MAX_PCR: u32 = 23;

/// One PCR of a TPM, and the banks of it that are allocated.
pub struct TpmPcr {
    context: Context,
    index: u32,
    banks: Vec<HashAlg>,
}

fn tss_alg(alg: HashAlg) -> HashingAlgorithm {
    match alg {
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
    }
}

fn command(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> RegisterError {
    move |e| RegisterError::TpmCommand {
        command,
        source: Box::new(e),
    }
}

impl TpmPcr {
    /// Open the TPM named by `tcti` (e.g. `device:/dev/tpmrm0`) and select PCR `index`.
    pub fn open(tcti: &str, index: u32) -> Result<Self, RegisterError> {
        if index > MAX_PCR {
            return Err(RegisterError::BadIndex(index));
        }
        let open_err = |e: tss_esapi::Error| RegisterError::TpmOpen {
            tcti: tcti.to_owned(),
            source: Box::new(e),
        };
        let conf = TctiNameConf::from_str(tcti).map_err(open_err)?;
        let mut context = Context::new(conf).map_err(open_err)?;
        let banks = allocated_banks(&mut context)?;
        if banks.is_empty() {
            return Err(RegisterError::NoUsableBank);
        }
        Ok(TpmPcr {
            context,
            index,
            banks,
        })
    }

    /// The banks this register extends.
    pub fn banks(&self) -> &[HashAlg] {
        &self.banks
    }

    /// Read the PCR in bank `alg`.
    pub fn read(&mut self, alg: HashAlg) -> Result<Vec<u8>, RegisterError> {
        let selection = PcrSelectionListBuilder::new()
            .with_selection(tss_alg(alg), &[self.slot()?])
            .build()
            .map_err(command("PCR_Read"))?;
        let (_, _, digests) = self
            .context
            .pcr_read(selection)
            .map_err(command("PCR_Read"))?;
        digests
            .value()
            .first()
            .map(|d| d.value().to_vec())
            .ok_or_else(|| RegisterError::TpmCommand {
                command: "PCR_Read",
                source: format!("bank {alg:?} returned no value").into(),
            })
    }

    fn slot(&self) -> Result<PcrSlot, RegisterError> {
        PcrSlot::try_from(1u32 << self.index).map_err(|_| RegisterError::BadIndex(self.index))
    }
}

/// The sha256/sha384 banks that have at least one PCR allocated.
fn allocated_banks(context: &mut Context) -> Result<Vec<HashAlg>, RegisterError> {
    let (data, _) = context
        .get_capability(CapabilityType::AssignedPcr, 0, 8)
        .map_err(command("GetCapability(PCRS)"))?;
    let CapabilityData::AssignedPcr(list) = data else {
        return Err(RegisterError::TpmCommand {
            command: "GetCapability(PCRS)",
            source: "unexpected capability data".into(),
        });
    };
    let mut banks = Vec::new();
    for selection in list.get_selections() {
        let alg = match selection.hashing_algorithm() {
            HashingAlgorithm::Sha256 => HashAlg::Sha256,
            HashingAlgorithm::Sha384 => HashAlg::Sha384,
            _ => continue,
        };
        if !selection.is_empty() {
            banks.push(alg);
        }
    }
    Ok(banks)
}

impl MeasurementRegister for TpmPcr {
    fn id(&self) -> RegisterId {
        RegisterId::TpmPcr { index: self.index }
    }

    fn extend(&mut self, digests: &Digests) -> Result<(), RegisterError> {
        let mut values = DigestValues::new();
        for &alg in &self.banks {
            let digest =
                Digest::try_from(digests.get(alg).to_vec()).map_err(command("PCR_Extend"))?;
            values.set(tss_alg(alg), digest);
        }
        let handle =
            PcrHandle::try_from(self.index).map_err(|_| RegisterError::BadIndex(self.index))?;
        self.context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, values)
            })
            .map_err(command("PCR_Extend"))
    }
}
