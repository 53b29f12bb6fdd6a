//! Verifying SEV-SNP evidence: the endorsement key's certificate chains to AMD's root
//! for Milan, Genoa or Turin (built into the `sev` crate, never taken from the
//! evidence), the report is signed by it, and the report's fields satisfy the policy:
//! debug off, the expected VMPL, report data, host data and measurement, a TCB no older
//! than the minimum and equal to the one the VCEK certifies, and the chip the VCEK was
//! issued for. Each failure names itself.

use der::Decode as _;
use sev::certs::snp::{Certificate, Chain, Verifiable as _, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertType, TcbVersion};
use x509_cert::ext::Extension;

use super::SnpEvidence;

/// The TCB a verifier requires at least (SVN per component).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode SVN.
    pub microcode: u8,
}

/// What a report must show. `None` fields are not checked.
#[derive(Debug, Clone, Default)]
pub struct SnpPolicy {
    /// Launch digest (`cvm measure --platform snp`).
    pub measurement: Option<[u8; 48]>,
    /// Report data the verifier bound the report to (nonce, key hash).
    pub report_data: Option<[u8; 64]>,
    /// Host data (the init-data digest, for a KBS).
    pub host_data: Option<[u8; 32]>,
    /// The VMPL the report must come from (0 for a guest without an SVSM).
    pub vmpl: Option<u32>,
    /// The oldest acceptable reported TCB.
    pub min_tcb: MinTcb,
}

/// A check of SNP evidence that failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnpVerifyError {
    /// The evidence carries no VCEK or VLEK.
    #[error("SNP evidence has no VCEK or VLEK certificate")]
    NoEndorsementKey,
    /// A certificate does not parse.
    #[error("SNP {0} certificate is not DER X.509")]
    Certificate(&'static str),
    /// The endorsement key does not chain to a built-in AMD root.
    #[error("SNP {0} does not chain to the AMD root of Milan, Genoa or Turin")]
    Chain(&'static str),
    /// The report signature does not verify.
    #[error("SNP report signature does not verify with the {0}")]
    Signature(&'static str),
    /// The guest may be debugged.
    #[error("SNP guest policy allows debugging (policy {0:#x})")]
    Debug(u64),
    /// Another VMPL.
    #[error("SNP VMPL mismatch: expected {expected}, got {actual}")]
    Vmpl {
        /// Expected.
        expected: u32,
        /// In the report.
        actual: u32,
    },
    /// Another report data.
    #[error("SNP report data mismatch: expected {expected}, got {actual}")]
    ReportData {
        /// Hex, expected.
        expected: String,
        /// Hex, in the report.
        actual: String,
    },
    /// Another host data.
    #[error("SNP host data mismatch: expected {expected}, got {actual}")]
    HostData {
        /// Hex, expected.
        expected: String,
        /// Hex, in the report.
        actual: String,
    },
    /// Another launch measurement.
    #[error("SNP measurement mismatch: expected {expected}, got {actual}")]
    Measurement {
        /// Hex, expected.
        expected: String,
        /// Hex, in the report.
        actual: String,
    },
    /// A TCB component older than the minimum.
    #[error("SNP reported TCB {component} SVN {actual} is below the minimum {min}")]
    TcbTooOld {
        /// Which component.
        component: &'static str,
        /// Minimum.
        min: u8,
        /// In the report.
        actual: u8,
    },
    /// The VCEK was issued for another TCB than the report claims.
    #[error("SNP VCEK certifies {component} SVN {cert}, the report's reported TCB says {report}")]
    VcekTcb {
        /// Which component.
        component: &'static str,
        /// In the VCEK.
        cert: u8,
        /// In the report.
        report: u8,
    },
    /// The VCEK was issued for another chip.
    #[error("SNP VCEK hwID does not match the report's chip ID")]
    ChipId,
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSnp {
    /// The processor generation whose AMD root signed the chain.
    pub generation: &'static str,
    /// Which endorsement key signed: `VCEK` or `VLEK`.
    pub key: &'static str,
    /// The launch measurement.
    pub measurement: [u8; 48],
}

type Roots = fn() -> std::io::Result<Certificate>;
const GENERATIONS: [(&str, Roots, Roots); 3] = [
    ("Milan", builtin::milan::ark, builtin::milan::ask),
    ("Genoa", builtin::genoa::ark, builtin::genoa::ask),
    ("Turin", builtin::turin::ark, builtin::turin::ask),
];

/// Verify `evidence` against `policy`.
pub fn verify_snp(
    evidence: &SnpEvidence,
    policy: &SnpPolicy,
) -> Result<VerifiedSnp, SnpVerifyError> {
    let entries = evidence.cert_chain.as_deref().unwrap_or_default();
    let find = |t: CertType| {
        entries
            .iter()
            .find(|e| e.cert_type == t)
            .map(|e| e.data.as_slice())
    };
    let (key, vek_der) = match (find(CertType::VCEK), find(CertType::VLEK)) {
        (Some(der), _) => ("VCEK", der),
        (None, Some(der)) => ("VLEK", der),
        (None, None) => return Err(SnpVerifyError::NoEndorsementKey),
    };
    let vek = Certificate::from_der(vek_der).map_err(|_| SnpVerifyError::Certificate(key))?;
    // A VLEK is signed by the ASVK the host supplies (itself signed by the ARK); a VCEK
    // by the built-in ASK. The root is always the built-in ARK.
    let intermediate = match key {
        "VLEK" => Some(
            find(CertType::ASK)
                .ok_or(SnpVerifyError::Chain("VLEK (no ASVK supplied)"))
                .and_then(|d| {
                    Certificate::from_der(d).map_err(|_| SnpVerifyError::Certificate("ASVK"))
                })?,
        ),
        _ => None,
    };
    let report = &evidence.attestation_report;
    let mut generation = None;
    for (name, ark, ask) in GENERATIONS {
        let (Ok(ark), Ok(ask)) = (ark(), ask()) else {
            continue;
        };
        let chain = Chain {
            ca: ca::Chain {
                ark,
                ask: intermediate.clone().unwrap_or(ask),
            },
            vek: vek.clone(),
        };
        if chain.verify().is_ok() {
            if (&chain, report).verify().is_err() {
                return Err(SnpVerifyError::Signature(key));
            }
            generation = Some(name);
            break;
        }
    }
    let generation = generation.ok_or(SnpVerifyError::Chain(key))?;

    check_report(report, policy)?;
    if key == "VCEK" {
        check_vcek_binding(vek_der, report)?;
    }
    Ok(VerifiedSnp {
        generation,
        key,
        measurement: report.measurement,
    })
}

/// The policy checks on a report whose signature has been verified.
pub fn check_report(report: &AttestationReport, policy: &SnpPolicy) -> Result<(), SnpVerifyError> {
    let guest_policy: u64 = report.policy.0;
    if guest_policy & (1 << 19) != 0 {
        return Err(SnpVerifyError::Debug(guest_policy));
    }
    if let Some(expected) = policy.vmpl
        && report.vmpl != expected
    {
        return Err(SnpVerifyError::Vmpl {
            expected,
            actual: report.vmpl,
        });
    }
    if let Some(expected) = policy.report_data
        && report.report_data != expected
    {
        return Err(SnpVerifyError::ReportData {
            expected: hex::encode(expected),
            actual: hex::encode(report.report_data),
        });
    }
    if let Some(expected) = policy.host_data
        && report.host_data != expected
    {
        return Err(SnpVerifyError::HostData {
            expected: hex::encode(expected),
            actual: hex::encode(report.host_data),
        });
    }
    if let Some(expected) = policy.measurement
        && report.measurement != expected
    {
        return Err(SnpVerifyError::Measurement {
            expected: hex::encode(expected),
            actual: hex::encode(report.measurement),
        });
    }
    let t = &report.reported_tcb;
    let min = policy.min_tcb;
    for (component, actual, min) in [
        ("bootloader", t.bootloader, min.bootloader),
        ("tee", t.tee, min.tee),
        ("snp", t.snp, min.snp),
        ("microcode", t.microcode, min.microcode),
    ] {
        if actual < min {
            return Err(SnpVerifyError::TcbTooOld {
                component,
                min,
                actual,
            });
        }
    }
    Ok(())
}

/// AMD's VCEK extensions (VCEK specification §3): TCB SVNs and the chip's hwID.
const OID_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

fn extension<'a>(exts: &'a [Extension], oid: &str) -> Option<&'a [u8]> {
    exts.iter()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn svn(exts: &[Extension], oid: &str) -> Option<u8> {
    let value = extension(exts, oid)?;
    // DER INTEGER holding a small non-negative number.
    let int = der::asn1::Int::from_der(value).ok()?;
    match int.as_bytes() {
        [v] => Some(*v),
        [0, v] => Some(*v),
        _ => None,
    }
}

/// The VCEK is issued for one chip and one TCB: both must be the report's.
pub fn check_vcek_binding(
    vcek_der: &[u8],
    report: &AttestationReport,
) -> Result<(), SnpVerifyError> {
    let cert = x509_cert::Certificate::from_der(vcek_der)
        .map_err(|_| SnpVerifyError::Certificate("VCEK"))?;
    let exts = cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default();
    let t: &TcbVersion = &report.reported_tcb;
    for (component, oid, reported) in [
        ("bootloader", OID_BL, t.bootloader),
        ("tee", OID_TEE, t.tee),
        ("snp", OID_SNP, t.snp),
        ("microcode", OID_UCODE, t.microcode),
    ] {
        let cert_svn = svn(exts, oid).ok_or(SnpVerifyError::Certificate("VCEK"))?;
        if cert_svn != reported {
            return Err(SnpVerifyError::VcekTcb {
                component,
                cert: cert_svn,
                report: reported,
            });
        }
    }
    // A report with MASK_CHIP_ID has a zero chip ID; then there is nothing to compare.
    if report.chip_id != [0; 64] {
        // The extension value is the raw hwID (AMD does not wrap it in another
        // OCTET STRING).
        let hwid = extension(exts, OID_HWID).ok_or(SnpVerifyError::Certificate("VCEK"))?;
        // Turin VCEKs carry an 8-byte hwID; the report's chip ID is zero-padded.
        let n = hwid.len().min(64);
        if hwid[..n] != report.chip_id[..n] || report.chip_id[n..].iter().any(|&b| b != 0) {
            return Err(SnpVerifyError::ChipId);
        }
    }
    Ok(())
}
