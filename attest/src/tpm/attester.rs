//! Producing a quote in the guest: an attestation key created under the endorsement
//! hierarchy (restricted RSA-2048 signing key, TCG EK credential profile policies), a
//! quote over all 24 sha256 PCRs qualified by the caller's nonce, and the PCR values.

use std::str::FromStr as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tss_esapi::Context;
use tss_esapi::abstraction::pcr::read_all;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ak, ek};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Data, PcrSelectionListBuilder, PcrSlot, SignatureScheme};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall as _;

use super::{PCR_COUNT, TpmEvidence, TpmQuote};

/// Largest qualifying data a quote accepts here (Trustee sends 32 bytes).
pub const MAX_NONCE: usize = 32;

/// A quote could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// The nonce is empty or too long.
    #[error("TPM quote nonce must be 1 to {MAX_NONCE} bytes, got {0}")]
    Nonce(usize),
    /// A TPM operation failed.
    #[error("TPM {step} failed")]
    Tpm {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: tss_esapi::Error,
    },
    /// The AK public key could not be encoded.
    #[error("encode the AK public key as DER failed: {0}")]
    Encode(String),
    /// The TPM returned fewer PCR values than asked for.
    #[error("TPM returned {0} sha256 PCR values instead of 24")]
    Pcrs(usize),
}

fn tpm(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> AttesterError {
    move |source| AttesterError::Tpm { step, source }
}

const SLOTS: [PcrSlot; PCR_COUNT] = [
    PcrSlot::Slot0,
    PcrSlot::Slot1,
    PcrSlot::Slot2,
    PcrSlot::Slot3,
    PcrSlot::Slot4,
    PcrSlot::Slot5,
    PcrSlot::Slot6,
    PcrSlot::Slot7,
    PcrSlot::Slot8,
    PcrSlot::Slot9,
    PcrSlot::Slot10,
    PcrSlot::Slot11,
    PcrSlot::Slot12,
    PcrSlot::Slot13,
    PcrSlot::Slot14,
    PcrSlot::Slot15,
    PcrSlot::Slot16,
    PcrSlot::Slot17,
    PcrSlot::Slot18,
    PcrSlot::Slot19,
    PcrSlot::Slot20,
    PcrSlot::Slot21,
    PcrSlot::Slot22,
    PcrSlot::Slot23,
];

/// Quote all 24 sha256 PCRs of the TPM at `tcti` with `nonce` as qualifying data.
pub fn quote(tcti: &str, nonce: &[u8]) -> Result<TpmEvidence, AttesterError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return Err(AttesterError::Nonce(nonce.len()));
    }
    let conf = TctiNameConf::from_str(tcti).map_err(tpm("TCTI configuration"))?;
    let mut ctx = Context::new(conf).map_err(tpm("open"))?;
    let ek_handle = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Rsa, DefaultKey)
        .map_err(tpm("create EK"))?;
    let ak_key = ak::create_ak(
        &mut ctx,
        ek_handle,
        HashingAlgorithm::Sha256,
        SignatureSchemeAlgorithm::RsaSsa,
        None,
        DefaultKey,
    )
    .map_err(tpm("create AK"))?;
    let ak_handle = ak::load_ak(
        &mut ctx,
        ek_handle,
        None,
        ak_key.out_private,
        ak_key.out_public.clone(),
    )
    .map_err(tpm("load AK"))?;

    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &SLOTS)
        .build()
        .map_err(tpm("PCR selection"))?;
    let qualifying = Data::try_from(nonce.to_vec()).map_err(tpm("nonce"))?;
    let (attest, signature) = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.quote(
                ak_handle,
                qualifying,
                SignatureScheme::Null,
                selection.clone(),
            )
        })
        .map_err(tpm("Quote"))?;
    let pcr_data = read_all(&mut ctx, selection).map_err(tpm("PCR_Read"))?;
    let bank = pcr_data
        .pcr_bank(HashingAlgorithm::Sha256)
        .ok_or(AttesterError::Pcrs(0))?;
    let pcrs: Vec<String> = SLOTS
        .iter()
        .filter_map(|slot| bank.get_digest(*slot).map(|d| hex::encode(d.value())))
        .collect();
    if pcrs.len() != PCR_COUNT {
        return Err(AttesterError::Pcrs(pcrs.len()));
    }
    let ek_cert = ek::retrieve_ek_pubcert(
        &mut ctx,
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
    )
    .ok()
    .map(|der| STANDARD.encode(der));
    let _ = ctx.flush_context(ak_handle.into());
    let _ = ctx.flush_context(ek_handle.into());

    let spki = picky_asn1_x509::SubjectPublicKeyInfo::try_from(ak_key.out_public)
        .map_err(|e| AttesterError::Encode(e.to_string()))?;
    let ak_der = picky_asn1_der::to_vec(&spki).map_err(|e| AttesterError::Encode(e.to_string()))?;
    Ok(TpmEvidence {
        ak_public: STANDARD.encode(ak_der),
        tpm_quote: TpmQuote {
            message: STANDARD.encode(attest.marshall().map_err(tpm("marshal TPMS_ATTEST"))?),
            signature: STANDARD.encode(
                signature
                    .marshall()
                    .map_err(tpm("marshal TPMT_SIGNATURE"))?,
            ),
            pcrs,
        },
        ek_cert,
    })
}
