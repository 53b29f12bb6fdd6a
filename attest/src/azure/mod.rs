//! Azure confidential VMs (`az-snp-vtpm`): the paravisor (HCL) publishes an SEV-SNP
//! report in the vTPM's NV index 0x01400001, wrapped in an HCL report whose variable
//! data (JSON) holds the vTPM's attestation key. The SNP report's report data is the
//! hash of that variable data, so verifying the SNP report vouches for the AK, and the
//! AK's quote (with the verifier's nonce) vouches for the PCRs. The AK is persistent at
//! 0x81000003. Verification (feature `verifier`) is in [`verifier`].

#[cfg(feature = "tpm")]
pub mod attester;
#[cfg(feature = "verifier")]
pub mod verifier;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// NV index where the HCL publishes its report.
pub const HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;
/// NV index the guest writes its report data to before reading the HCL report.
pub const REPORT_DATA_NV_INDEX: u32 = 0x0140_0002;
/// Persistent handle of the vTPM attestation key the HCL vouches for.
pub const AK_HANDLE: u32 = 0x8100_0003;

/// The report data the guest writes for `nonce` (and the HCL's `user-data` then
/// shows): the nonce, cut or zero-padded to 64 bytes.
pub fn nonce_report_data(nonce: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    let n = nonce.len().min(64);
    out[..n].copy_from_slice(&nonce[..n]);
    out
}

/// Evidence of the `az-snp-vtpm` TEE, in Trustee's version-2 shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzSnpEvidence {
    /// Format version (2).
    pub version: u32,
    /// A quote by the HCL's AK over all sha256 PCRs, qualified by the verifier's nonce.
    pub tpm_quote: AzTpmQuote,
    /// The HCL report from NV index 0x01400001, base64url.
    pub hcl_report: String,
    /// The VCEK certificate (DER, base64url) for the report's chip and TCB.
    pub vcek: String,
}

/// Evidence of the `az-tdx-vtpm` TEE, in Trustee's shape: as [`AzSnpEvidence`], with the
/// TD quote Azure's quoting service made from the HCL's TD report instead of a VCEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzTdxEvidence {
    /// Format version (1).
    pub version: u32,
    /// A quote by the HCL's AK over all sha256 PCRs, qualified by the verifier's nonce.
    pub tpm_quote: AzTpmQuote,
    /// The HCL report from NV index 0x01400001, base64url.
    pub hcl_report: String,
    /// The TD quote of the HCL report's TD report, base64url.
    pub td_quote: String,
}

/// The quote as Trustee's Azure verifiers carry it: hex fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzTpmQuote {
    /// Hex of the bare RSASSA signature (the TPMT_SIGNATURE's signature bytes).
    pub signature: String,
    /// Hex of the TPMS_ATTEST.
    pub message: String,
    /// The 24 sha256 PCR values, hex.
    pub pcrs: Vec<String>,
}

/// Offsets of the HCL report (little-endian): a 32-byte header, the hardware report
/// area (1184 bytes, the SNP report size), then the IGVM request data and its
/// variable data.
const HEADER: usize = 32;
const HW_REPORT_AREA: usize = 1184;
const REQUEST: usize = HEADER + HW_REPORT_AREA;
const VAR_DATA: usize = REQUEST + 20;
/// "HCLA".
const SIGNATURE: u32 = 0x414c_4348;
/// SNP and TDX report types.
const SNP: u32 = 2;
const TDX: u32 = 4;
/// TD report size.
const TD_REPORT_SIZE: usize = 1024;

/// Which hardware report the HCL report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwareReport {
    /// An SEV-SNP attestation report (1184 bytes).
    Snp,
    /// A TDX TD report (1024 bytes; MAC'd, not signed: verified through a TD quote).
    Tdx,
}

/// A parsed HCL report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport {
    /// The hardware report's type.
    pub kind: HardwareReport,
    /// The hardware report's bytes.
    pub hw_report: Vec<u8>,
    /// The variable data (JSON) whose hash is the hardware report's report data.
    pub var_data: Vec<u8>,
    /// The hash algorithm of that binding: 1 sha256, 2 sha384, 3 sha512.
    pub hash_type: u32,
}

/// An HCL report that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HclError {
    /// Too short for its header or its declared sizes.
    #[error("HCL report truncated: {0}")]
    Truncated(&'static str),
    /// Not an HCL attestation report.
    #[error("HCL report signature is {0:#x}, not \"HCLA\"")]
    Signature(u32),
    /// A report type other than SNP or TDX.
    #[error("HCL report type {0} is neither SNP (2) nor TDX (4)")]
    ReportType(u32),
    /// An unknown binding hash.
    #[error("HCL report data hash type {0} is not sha256, sha384 or sha512")]
    HashType(u32),
    /// The variable data is not the expected JSON.
    #[error("HCL variable data: {0}")]
    VarData(String),
}

fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, HclError> {
    let s = b.get(at..at + 4).ok_or(HclError::Truncated(what))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parse an HCL report (untrusted bytes: never panics).
pub fn parse_hcl_report(bytes: &[u8]) -> Result<HclReport, HclError> {
    let signature = u32_at(bytes, 0, "header")?;
    if signature != SIGNATURE {
        return Err(HclError::Signature(signature));
    }
    let report_type = u32_at(bytes, REQUEST + 8, "request data")?;
    let hash_type = u32_at(bytes, REQUEST + 12, "request data")?;
    let var_size = u32_at(bytes, REQUEST + 16, "request data")? as usize;
    let kind = match report_type {
        SNP => HardwareReport::Snp,
        TDX => HardwareReport::Tdx,
        t => return Err(HclError::ReportType(t)),
    };
    if !(1..=3).contains(&hash_type) {
        return Err(HclError::HashType(hash_type));
    }
    let hw_len = if kind == HardwareReport::Snp {
        HW_REPORT_AREA
    } else {
        TD_REPORT_SIZE
    };
    let var_data = VAR_DATA
        .checked_add(var_size)
        .and_then(|end| bytes.get(VAR_DATA..end))
        .ok_or(HclError::Truncated("variable data"))?;
    Ok(HclReport {
        kind,
        hw_report: bytes[HEADER..HEADER + hw_len].to_vec(),
        var_data: var_data.to_vec(),
        hash_type,
    })
}

impl HclReport {
    /// The report data the hardware report must carry: the hash of the variable data,
    /// zero-padded to 64 bytes.
    pub fn expected_report_data(&self) -> [u8; 64] {
        let digest: Vec<u8> = match self.hash_type {
            1 => Sha256::digest(&self.var_data).to_vec(),
            2 => Sha384::digest(&self.var_data).to_vec(),
            _ => Sha512::digest(&self.var_data).to_vec(),
        };
        let mut out = [0u8; 64];
        out[..digest.len()].copy_from_slice(&digest);
        out
    }

    /// The hardware report's report data field.
    pub fn report_data(&self) -> [u8; 64] {
        // SNP: REPORT_DATA at 0x50. TD report: REPORTMACSTRUCT.REPORTDATA at 128.
        let at = if self.kind == HardwareReport::Snp {
            0x50
        } else {
            128
        };
        let mut out = [0u8; 64];
        out.copy_from_slice(&self.hw_report[at..at + 64]);
        out
    }

    /// The attestation key's RSA modulus and exponent (big-endian) from the variable
    /// data's JWK with `kid` "HCLAkPub".
    pub fn ak_rsa(&self) -> Result<(Vec<u8>, Vec<u8>), HclError> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let v: serde_json::Value = serde_json::from_slice(&self.var_data)
            .map_err(|e| HclError::VarData(format!("not JSON: {e}")))?;
        let key = v["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == "HCLAkPub"))
            .ok_or_else(|| HclError::VarData("no HCLAkPub key".into()))?;
        if key["kty"] != "RSA" {
            return Err(HclError::VarData("HCLAkPub is not an RSA key".into()));
        }
        let field = |name: &str| {
            key[name]
                .as_str()
                .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
                .ok_or_else(|| HclError::VarData(format!("HCLAkPub.{name} is not base64url")))
        };
        Ok((field("n")?, field("e")?))
    }

    /// For a TD report: MRTD and RTMR0..3 (TDINFO, after the 256-byte REPORTMACSTRUCT,
    /// the 239-byte TEE_TCB_INFO and 17 reserved bytes).
    pub fn td_registers(&self) -> Option<([u8; 48], [[u8; 48]; 4])> {
        if self.kind != HardwareReport::Tdx {
            return None;
        }
        let tdinfo = 256 + 239 + 17;
        let field =
            |at: usize| -> Option<[u8; 48]> { self.hw_report.get(at..at + 48)?.try_into().ok() };
        let mrtd = field(tdinfo + 16)?;
        // After attributes (8), xfam (8), MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG.
        let rtmr0 = tdinfo + 16 + 4 * 48;
        Some((
            mrtd,
            [
                field(rtmr0)?,
                field(rtmr0 + 48)?,
                field(rtmr0 + 96)?,
                field(rtmr0 + 144)?,
            ],
        ))
    }

    /// The variable data's `user-data` (hex), when present.
    pub fn user_data(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.var_data).ok()?;
        v["user-data"].as_str().map(str::to_owned)
    }
}
