//! Evidence verification per TEE, with attest/'s verifiers: the evidence must be
//! genuine, bound to this session's runtime data (report data / quote nonce), bound to
//! the init-data the guest presented, and, when reference values for its platform are
//! registered, match one of them. The result is the claims a token carries and whether
//! a reference was matched (AR4SI `affirming`) or none was registered (`warning`).

mod azure;
mod sample;
mod snp;
mod tdx;
mod tpm;

use cvm_attest::tdx::verifier::QuoteCollateralV3;
use cvm_attest::tpm::verifier::AkChallenge;
use cvm_kbs_client::initdata::InitData;
use kbs_types::Tee;
use serde_json::Value;

use crate::reference::ReferenceSet;

/// Evidence that does not pass.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A TEE this broker does not verify.
    #[error("TEE {0} is not supported by this broker")]
    UnsupportedTee(String),
    /// `sample` evidence without the dev flag.
    #[error(
        "the insecure sample TEE is refused: start the broker with --insecure-allow-sample to accept it"
    )]
    SampleRefused,
    /// Not the TEE's evidence JSON.
    #[error("{tee} evidence is malformed: {detail}")]
    Malformed {
        /// The TEE.
        tee: &'static str,
        /// Why.
        detail: String,
    },
    /// The evidence is not genuine or not fresh.
    #[error("{tee} evidence does not verify: {detail}")]
    Evidence {
        /// The TEE.
        tee: &'static str,
        /// Why.
        detail: String,
    },
    /// The init-data digest is not what the platform bound.
    #[error("init-data does not match: {0}")]
    InitData(String),
    /// References are registered for the platform and none matches.
    #[error("evidence matches no registered reference value: {0}")]
    Reference(String),
    /// The broker lacks something it needs to verify this TEE.
    #[error("the broker cannot verify {tee}: {detail}")]
    Config {
        /// The TEE.
        tee: &'static str,
        /// What is missing.
        detail: String,
    },
}

/// What verification needs besides the evidence.
#[derive(Debug)]
pub struct VerifyContext<'a> {
    /// The registered reference values.
    pub references: &'a ReferenceSet,
    /// The credential challenge this session sent for its AK (`tpm`), if any.
    pub ak_challenge: Option<&'a AkChallenge>,
    /// AKs trusted without a challenge (DER SubjectPublicKeyInfo), as Trustee's
    /// `trusted_ak_keys_dir`.
    pub trusted_aks: &'a [Vec<u8>],
    /// TDX collateral for offline DCAP verification.
    pub tdx_collateral: Option<&'a QuoteCollateralV3>,
    /// Whether the insecure `sample` TEE is accepted (dev only).
    pub allow_sample: bool,
    /// Now, seconds since the epoch.
    pub now: u64,
}

/// Evidence that passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The verifier's claims, under the TEE's name in the token.
    pub claims: Value,
    /// The reference matched, if references for the platform are registered.
    pub reference: Option<String>,
}

impl Verified {
    /// AR4SI status: `affirming` when a reference matched, `warning` when none is
    /// registered for the platform (genuine, but nothing says it is the right build).
    pub fn status(&self) -> &'static str {
        if self.reference.is_some() {
            "affirming"
        } else {
            "warning"
        }
    }
}

/// Verify `evidence` of `tee` bound to the runtime-data digest `report_data` and to
/// `init_data` if the guest presented one.
pub fn verify(
    tee: Tee,
    evidence: &Value,
    report_data: &[u8; 48],
    init_data: Option<&InitData>,
    ctx: &VerifyContext<'_>,
) -> Result<Verified, VerifyError> {
    match tee {
        Tee::Tpm => tpm::verify(evidence, report_data, init_data, ctx),
        Tee::Snp => snp::verify(evidence, report_data, init_data, ctx),
        Tee::Tdx => tdx::verify(evidence, report_data, init_data, ctx),
        Tee::AzSnpVtpm => azure::verify_snp(evidence, report_data, init_data),
        Tee::AzTdxVtpm => azure::verify_tdx(evidence, report_data, init_data, ctx),
        Tee::Sample if ctx.allow_sample => sample::verify(evidence, report_data),
        Tee::Sample => Err(VerifyError::SampleRefused),
        other => Err(VerifyError::UnsupportedTee(other.to_string())),
    }
}

/// Parse `evidence` as `T`, naming the TEE on failure.
fn parse<T: serde::de::DeserializeOwned>(
    tee: &'static str,
    evidence: &Value,
) -> Result<T, VerifyError> {
    T::deserialize(evidence).map_err(|e| VerifyError::Malformed {
        tee,
        detail: e.to_string(),
    })
}

/// The first reference (by name) for which `mismatch` returns `None`; otherwise every
/// mismatch, named.
fn match_reference<'r, R: ?Sized + 'r>(
    candidates: impl Iterator<Item = (&'r str, &'r R)>,
    mismatch: impl Fn(&R) -> Option<String>,
) -> Result<Option<String>, VerifyError> {
    let mut misses = Vec::new();
    for (name, r) in candidates {
        match mismatch(r) {
            None => return Ok(Some(name.to_owned())),
            Some(why) => misses.push(format!("{name}: {why}")),
        }
    }
    if misses.is_empty() {
        Ok(None)
    } else {
        Err(VerifyError::Reference(misses.join("; ")))
    }
}

/// PCR 8 must be the init-data digest extended once; with no init-data it must be
/// untouched (zero), so a guest cannot hide the configuration it was given.
fn check_pcr8(pcr8: &[u8; 32], init_data: Option<&InitData>) -> Result<(), VerifyError> {
    let expected = init_data.map(InitData::tpm_pcr8).unwrap_or([0u8; 32]);
    if *pcr8 == expected {
        Ok(())
    } else {
        Err(VerifyError::InitData(format!(
            "PCR 8 is {}, expected {} ({})",
            hex::encode(pcr8),
            hex::encode(expected),
            if init_data.is_some() {
                "the init-data digest extended once"
            } else {
                "zero: no init-data was presented"
            }
        )))
    }
}
