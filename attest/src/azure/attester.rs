//! Azure confidential VM evidence: the HCL report from the vTPM's NV index (refreshed
//! with the verifier's nonce), a quote by the HCL's persistent AK over that nonce, and
//! from Azure's instance metadata service (IMDS) the VCEK (`az-snp-vtpm`) or a TD quote
//! of the HCL's TD report (`az-tdx-vtpm`).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::str::FromStr as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tss_esapi::Context;
use tss_esapi::abstraction::nv;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};
use tss_esapi::tcti_ldr::TctiNameConf;

use super::{
    AK_HANDLE, AzSnpEvidence, AzTdxEvidence, AzTpmQuote, HCL_REPORT_NV_INDEX, REPORT_DATA_NV_INDEX,
};
use crate::tpm::attester::{AttesterError, quote_persistent};

/// Azure's IMDS endpoint for the VM's VCEK (and chain).
const IMDS: &str = "169.254.169.254:80";
const VCEK_PATH: &str = "/metadata/THIM/amd/certification";
const TD_QUOTE_PATH: &str = "/acc/tdquote";

/// Azure evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum AzAttesterError {
    /// The vTPM has no HCL report: this is not an Azure confidential VM.
    #[error(
        "not an Azure confidential VM: the vTPM has no HCL report at NV index {HCL_REPORT_NV_INDEX:#010x} ({0})"
    )]
    NotAzure(String),
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] AttesterError),
    /// IMDS did not give a VCEK.
    #[error("fetch the VCEK from Azure IMDS failed: {0}")]
    Imds(String),
}

/// Read the HCL report from the vTPM at `tcti`, after writing `report_data` (the
/// verifier's nonce, zero-padded) to NV 0x01400002 so the paravisor refreshes the
/// report with it as `user-data`.
pub fn hcl_report(tcti: &str, report_data: &[u8; 64]) -> Result<Vec<u8>, AzAttesterError> {
    let not_azure = |e: tss_esapi::Error| AzAttesterError::NotAzure(e.to_string());
    let conf = TctiNameConf::from_str(tcti).map_err(not_azure)?;
    let mut ctx = Context::new(conf).map_err(not_azure)?;
    let index = NvIndexTpmHandle::new(HCL_REPORT_NV_INDEX).map_err(not_azure)?;
    // The report index must exist before anything is written: on a vTPM without it
    // (not Azure) nothing is changed.
    ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(index)))
        .map_err(not_azure)?;
    write_report_data(&mut ctx, report_data)?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        nv::read_full(c, NvAuth::Owner, index)
    })
    .map_err(not_azure)
}

/// Write the report data to NV 0x01400002, defining the index (64 bytes, owner
/// read/write) when the platform has not.
fn write_report_data(ctx: &mut Context, data: &[u8; 64]) -> Result<(), AttesterError> {
    let tpm = |step: &'static str| move |source| AttesterError::Tpm { step, source };
    let index = NvIndexTpmHandle::new(REPORT_DATA_NV_INDEX).map_err(tpm("NV index"))?;
    let handle =
        match ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(index))) {
            Ok(h) => NvIndexHandle::from(h),
            Err(_) => {
                let attributes = NvIndexAttributesBuilder::new()
                    .with_owner_write(true)
                    .with_owner_read(true)
                    .build()
                    .map_err(tpm("NV attributes"))?;
                let public = NvPublicBuilder::new()
                    .with_nv_index(index)
                    .with_index_name_algorithm(HashingAlgorithm::Sha256)
                    .with_index_attributes(attributes)
                    .with_data_area_size(64)
                    .build()
                    .map_err(tpm("NV public"))?;
                ctx.execute_with_session(Some(AuthSession::Password), |c| {
                    c.nv_define_space(Provision::Owner, None, public)
                })
                .map_err(tpm("NV_DefineSpace 0x01400002"))?
            }
        };
    let buffer = MaxNvBuffer::try_from(data.to_vec()).map_err(tpm("NV buffer"))?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_write(NvAuth::Owner, handle, buffer, 0)
    })
    .map_err(tpm("NV_Write 0x01400002"))
}

/// One request to Azure's instance metadata service; the answer's JSON.
fn imds(
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<serde_json::Value, AzAttesterError> {
    let fail = |e: std::io::Error| AzAttesterError::Imds(e.to_string());
    let addr = IMDS
        .parse()
        .map_err(|_| AzAttesterError::Imds("bad address".into()))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(fail)?;
    let body = body.unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(fail)?;
    let mut raw = Vec::new();
    s.take(1 << 20).read_to_end(&mut raw).map_err(fail)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| AzAttesterError::Imds("no HTTP response".into()))?;
    serde_json::from_slice(&raw[split + 4..])
        .map_err(|e| AzAttesterError::Imds(format!("{path}: answer is not JSON: {e}")))
}

/// The VCEK (DER) for this VM's chip and TCB, from IMDS (which serves it as PEM).
pub fn vcek_from_imds() -> Result<Vec<u8>, AzAttesterError> {
    let body = imds("GET", VCEK_PATH, None)?;
    let pem = body["vcekCert"]
        .as_str()
        .ok_or_else(|| AzAttesterError::Imds("no vcekCert in the answer".into()))?;
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| AzAttesterError::Imds("vcekCert is not PEM".into()))
}

/// A TD quote of `td_report` from Azure's quoting service (through IMDS).
pub fn td_quote_from_imds(td_report: &[u8]) -> Result<Vec<u8>, AzAttesterError> {
    let body = serde_json::json!({ "report": URL_SAFE_NO_PAD.encode(td_report) }).to_string();
    let answer = imds("POST", TD_QUOTE_PATH, Some(&body))?;
    let quote = answer["quote"]
        .as_str()
        .ok_or_else(|| AzAttesterError::Imds("no quote in the answer".into()))?;
    URL_SAFE_NO_PAD
        .decode(quote.trim_end_matches('='))
        .map_err(|_| AzAttesterError::Imds("quote is not base64url".into()))
}

fn az_quote(q: crate::tpm::TpmQuote) -> AzTpmQuote {
    let hex_of = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(hex::encode)
            .unwrap_or_default()
    };
    AzTpmQuote {
        // TPMT_SIGNATURE = sigAlg (2) ‖ hash (2) ‖ size (2) ‖ signature: Azure's form
        // carries only the signature.
        signature: hex_of(&q.signature)
            .get(12..)
            .unwrap_or_default()
            .to_owned(),
        message: hex_of(&q.message),
        pcrs: q.pcrs,
    }
}

/// `az-tdx-vtpm` evidence for `nonce`.
pub fn tdx_evidence(tcti: &str, nonce: &[u8]) -> Result<AzTdxEvidence, AzAttesterError> {
    let hcl = hcl_report(tcti, &super::nonce_report_data(nonce))?;
    let parsed = super::parse_hcl_report(&hcl)
        .map_err(|e| AzAttesterError::NotAzure(format!("HCL report: {e}")))?;
    if parsed.kind != super::HardwareReport::Tdx {
        return Err(AzAttesterError::NotAzure(
            "the HCL report carries an SNP report: use az-snp-vtpm".into(),
        ));
    }
    let td_quote = td_quote_from_imds(&parsed.hw_report)?;
    let q = quote_persistent(tcti, AK_HANDLE, nonce)?;
    Ok(AzTdxEvidence {
        version: 1,
        tpm_quote: az_quote(q),
        hcl_report: URL_SAFE_NO_PAD.encode(hcl),
        td_quote: URL_SAFE_NO_PAD.encode(td_quote),
    })
}

/// `az-snp-vtpm` evidence for `nonce`.
pub fn evidence(tcti: &str, nonce: &[u8]) -> Result<AzSnpEvidence, AzAttesterError> {
    let hcl = hcl_report(tcti, &super::nonce_report_data(nonce))?;
    let q = quote_persistent(tcti, AK_HANDLE, nonce)?;
    Ok(AzSnpEvidence {
        version: 2,
        tpm_quote: az_quote(q),
        hcl_report: URL_SAFE_NO_PAD.encode(hcl),
        vcek: URL_SAFE_NO_PAD.encode(vcek_from_imds()?),
    })
}
