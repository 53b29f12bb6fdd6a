//! The TPM attester in the guest: an attestation key (AK) created once under the
//! endorsement hierarchy (restricted RSA-2048 signing key, TCG EK credential profile
//! policies) and kept for the attester's life; the identity a verifier needs to bind it
//! to the EK (EK certificate, AK public area); credential activation; and quotes over
//! all 24 sha256 PCRs qualified by the verifier's nonce.

use std::str::FromStr as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tss_esapi::Context;
use tss_esapi::abstraction::pcr::read_all;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ak, ek};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, IdObject, PcrSelectionListBuilder, PcrSlot, Private, Public,
    SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall as _;

use super::{AkIdentity, PCR_COUNT, TpmEvidence, TpmQuote};

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
    /// The activation request is not base64 or too large for the TPM.
    #[error("credential activation input {0} is malformed")]
    Activation(&'static str),
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

/// An attestation key in the TPM at a TCTI.
#[derive(Debug)]
pub struct TpmAttester {
    tcti: TctiNameConf,
    ak_private: Private,
    ak_public: Public,
}

impl TpmAttester {
    /// Create the EK (from its template: the same key on every call) and a new AK under it.
    pub fn create(tcti: &str) -> Result<Self, AttesterError> {
        let tcti = TctiNameConf::from_str(tcti).map_err(tpm("TCTI configuration"))?;
        let mut ctx = Context::new(tcti.clone()).map_err(tpm("open"))?;
        let ek_handle = create_ek(&mut ctx)?;
        let ak = ak::create_ak(
            &mut ctx,
            ek_handle,
            HashingAlgorithm::Sha256,
            SignatureSchemeAlgorithm::RsaSsa,
            None,
            DefaultKey,
        )
        .map_err(tpm("create AK"));
        let _ = ctx.flush_context(ek_handle.into());
        let ak = ak?;
        Ok(Self {
            tcti,
            ak_private: ak.out_private,
            ak_public: ak.out_public,
        })
    }

    /// What a verifier needs to bind the AK to the EK: the EK certificate and public
    /// key, and the AK's public area (whose hash is its TPM name).
    pub fn identity(&self) -> Result<AkIdentity, AttesterError> {
        self.session()?.identity()
    }

    /// TPM2_ActivateCredential: recover the secret a verifier sealed to this TPM's EK
    /// for this AK's name. Fails unless both keys are in this TPM.
    pub fn activate(
        &self,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, AttesterError> {
        self.session()?.activate(credential_blob, encrypted_secret)
    }

    /// Quote all 24 sha256 PCRs with `nonce` as qualifying data.
    pub fn quote(&self, nonce: &[u8]) -> Result<TpmEvidence, AttesterError> {
        self.session()?.quote(nonce)
    }

    /// Open the TPM with the EK loaded, for several operations in a row.
    pub fn session(&self) -> Result<TpmSession, AttesterError> {
        let mut ctx = Context::new(self.tcti.clone()).map_err(tpm("open"))?;
        let ek = create_ek(&mut ctx)?;
        Ok(TpmSession {
            ctx,
            ek,
            ak: None,
            ak_private: self.ak_private.clone(),
            ak_public: self.ak_public.clone(),
        })
    }
}

/// One open connection to the TPM with the EK (and, once needed, the AK) loaded.
/// Creating the EK is the expensive step (an RSA-2048 primary key from its template),
/// so a handshake that needs the identity, an activation and a quote pays for it once.
/// The handles are flushed on drop.
#[derive(Debug)]
pub struct TpmSession {
    ctx: Context,
    ek: KeyHandle,
    ak: Option<KeyHandle>,
    ak_private: Private,
    ak_public: Public,
}

impl Drop for TpmSession {
    fn drop(&mut self) {
        if let Some(ak) = self.ak.take() {
            let _ = self.ctx.flush_context(ak.into());
        }
        let _ = self.ctx.flush_context(self.ek.into());
    }
}

impl TpmSession {
    fn ak(&mut self) -> Result<KeyHandle, AttesterError> {
        if let Some(ak) = self.ak {
            return Ok(ak);
        }
        let ak = ak::load_ak(
            &mut self.ctx,
            self.ek,
            None,
            self.ak_private.clone(),
            self.ak_public.clone(),
        )
        .map_err(tpm("load AK"))?;
        self.ak = Some(ak);
        Ok(ak)
    }

    /// See [`TpmAttester::identity`].
    pub fn identity(&mut self) -> Result<AkIdentity, AttesterError> {
        let (ek_public, _, _) = self
            .ctx
            .read_public(self.ek)
            .map_err(tpm("ReadPublic EK"))?;
        let ek_cert = ek_cert(&mut self.ctx);
        Ok(AkIdentity {
            ek_cert,
            ek_public: STANDARD.encode(spki_der(ek_public)?),
            ak_public: STANDARD.encode(spki_der(self.ak_public.clone())?),
            ak_tpm_public: STANDARD.encode(
                self.ak_public
                    .marshall()
                    .map_err(tpm("marshal AK TPMT_PUBLIC"))?,
            ),
        })
    }

    /// See [`TpmAttester::activate`].
    pub fn activate(
        &mut self,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, AttesterError> {
        let blob = IdObject::try_from(credential_blob.to_vec())
            .map_err(|_| AttesterError::Activation("credential_blob"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|_| AttesterError::Activation("encrypted_secret"))?;
        let ak_handle = self.ak()?;
        let ek_handle = self.ek;
        let ctx = &mut self.ctx;
        // The EK's policy is PolicySecret(endorsement hierarchy): satisfy it in a
        // policy session, authorised with the (empty) endorsement password.
        let policy = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm("StartAuthSession"))?
            .ok_or(AttesterError::Activation("policy session"))?;
        let policy_session = PolicySession::try_from(policy).map_err(tpm("policy session"))?;
        let out = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.policy_secret(
                    policy_session,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
            .map_err(tpm("PolicySecret(endorsement)"))
            .and_then(|_| {
                ctx.execute_with_sessions((Some(AuthSession::Password), Some(policy), None), |c| {
                    c.activate_credential(ak_handle, ek_handle, blob, secret)
                })
                .map_err(tpm("ActivateCredential"))
            });
        let _ = ctx.flush_context(SessionHandle::from(policy).into());
        Ok(out?.value().to_vec())
    }

    /// See [`TpmAttester::quote`].
    pub fn quote(&mut self, nonce: &[u8]) -> Result<TpmEvidence, AttesterError> {
        if nonce.is_empty() || nonce.len() > MAX_NONCE {
            return Err(AttesterError::Nonce(nonce.len()));
        }
        let ak_handle = self.ak()?;
        let tpm_quote = quote_pcrs(&mut self.ctx, ak_handle, nonce)?;
        let ek_cert = ek_cert(&mut self.ctx);
        Ok(TpmEvidence {
            ak_public: STANDARD.encode(spki_der(self.ak_public.clone())?),
            tpm_quote,
            ek_cert,
        })
    }
}

/// Quote all 24 sha256 PCRs with the loaded key `ak_handle`.
fn quote_pcrs(
    ctx: &mut Context,
    ak_handle: KeyHandle,
    nonce: &[u8],
) -> Result<TpmQuote, AttesterError> {
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
    let pcr_data = read_all(ctx, selection).map_err(tpm("PCR_Read"))?;
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
    Ok(TpmQuote {
        message: STANDARD.encode(attest.marshall().map_err(tpm("marshal TPMS_ATTEST"))?),
        signature: STANDARD.encode(
            signature
                .marshall()
                .map_err(tpm("marshal TPMT_SIGNATURE"))?,
        ),
        pcrs,
    })
}

/// Quote all 24 sha256 PCRs with the persistent key at `handle` (a key the platform
/// provisioned, such as Azure's HCL attestation key at 0x81000003).
pub fn quote_persistent(tcti: &str, handle: u32, nonce: &[u8]) -> Result<TpmQuote, AttesterError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return Err(AttesterError::Nonce(nonce.len()));
    }
    let conf = TctiNameConf::from_str(tcti).map_err(tpm("TCTI configuration"))?;
    let mut ctx = Context::new(conf).map_err(tpm("open"))?;
    let persistent = PersistentTpmHandle::new(handle).map_err(tpm("persistent handle"))?;
    let object = ctx
        .tr_from_tpm_public(TpmHandle::Persistent(persistent))
        .map_err(tpm("load persistent AK"))?;
    quote_pcrs(&mut ctx, KeyHandle::from(object), nonce)
}

/// The RSA EK certificate from the TPM's NV (standard base64), when it has one.
fn ek_cert(ctx: &mut Context) -> Option<String> {
    ek::retrieve_ek_pubcert(ctx, AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048))
        .ok()
        .map(|der| STANDARD.encode(der))
}

fn create_ek(ctx: &mut Context) -> Result<KeyHandle, AttesterError> {
    ek::create_ek_object(ctx, AsymmetricAlgorithm::Rsa, DefaultKey).map_err(tpm("create EK"))
}

fn spki_der(public: Public) -> Result<Vec<u8>, AttesterError> {
    let spki = picky_asn1_x509::SubjectPublicKeyInfo::try_from(public)
        .map_err(|e| AttesterError::Encode(e.to_string()))?;
    picky_asn1_der::to_vec(&spki).map_err(|e| AttesterError::Encode(e.to_string()))
}

/// Create an AK and quote once (for callers that need a single quote).
pub fn quote(tcti: &str, nonce: &[u8]) -> Result<TpmEvidence, AttesterError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return Err(AttesterError::Nonce(nonce.len()));
    }
    TpmAttester::create(tcti)?.quote(nonce)
}
