//! Verifying a TD quote offline: `dcap-qvl` checks the quote's signature chain (PCK
//! certificate to Intel's SGX root, the QE report, TCB info and QE identity signatures,
//! CRLs) against supplied collateral and yields the TCB status; then the TD report's
//! fields are checked against the policy: debug off, MRTD, RTMR0-3, MRCONFIGID and
//! report data. Each failure names itself.

pub use dcap_qvl::QuoteCollateralV3;
pub use dcap_qvl::quote::Quote;

/// What a TD report must show. `None` fields are not checked.
#[derive(Debug, Clone)]
pub struct TdxPolicy {
    /// MRTD (`cvm measure --platform tdx`).
    pub mrtd: Option<[u8; 48]>,
    /// RTMR0..3.
    pub rtmr: [Option<[u8; 48]>; 4],
    /// MRCONFIGID (the init-data digest, for a KBS).
    pub mr_config_id: Option<[u8; 48]>,
    /// Report data the verifier bound the quote to.
    pub report_data: Option<[u8; 64]>,
    /// TCB statuses accepted (Intel's names: `UpToDate`, `SWHardeningNeeded`, …).
    pub accepted_tcb_status: Vec<String>,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        Self {
            mrtd: None,
            rtmr: [None; 4],
            mr_config_id: None,
            report_data: None,
            accepted_tcb_status: vec!["UpToDate".into()],
        }
    }
}

/// A check of a TD quote that failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TdxVerifyError {
    /// The quote's signatures, certificates or collateral do not verify.
    #[error("TD quote does not verify: {0}")]
    Quote(String),
    /// A quote of an SGX enclave, not a TD.
    #[error("quote is an SGX enclave quote, not a TD quote")]
    NotTd,
    /// The platform's TCB status is not accepted.
    #[error(
        "TDX TCB status {status} is not accepted (accepted: {accepted:?}; advisories: {advisories:?})"
    )]
    TcbStatus {
        /// Intel's status.
        status: String,
        /// What the policy accepts.
        accepted: Vec<String>,
        /// Intel advisories that apply.
        advisories: Vec<String>,
    },
    /// The TD may be debugged.
    #[error("TD attributes allow debugging (TD_ATTRIBUTES {0})")]
    Debug(String),
    /// The CC event log does not parse.
    #[error("CC event log malformed")]
    EventLogParse(#[from] crate::tcg::FirmwareLogError),
    /// The CC event log does not replay to a quoted RTMR.
    #[error("CC event log does not replay to {register}: log gives {log}, quote has {quoted}")]
    EventLog {
        /// RTMR0..3.
        register: &'static str,
        /// Hex of the replayed value.
        log: String,
        /// Hex of the quoted value.
        quoted: String,
    },
    /// A measurement register differs.
    #[error("{register} mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// MRTD, RTMR0..3, MRCONFIGID or REPORTDATA.
        register: &'static str,
        /// Hex, expected.
        expected: String,
        /// Hex, in the quote.
        actual: String,
    },
}

/// The measurement registers of a verified quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTd {
    /// Intel's TCB status of the platform.
    pub tcb_status: String,
    /// MRTD.
    pub mrtd: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// REPORTDATA.
    pub report_data: [u8; 64],
}

/// When the collateral's TCB info says Intel publishes the next one (seconds since
/// the epoch): after that the collateral is stale and verification fails.
pub fn collateral_next_update(collateral: &QuoteCollateralV3) -> Option<u64> {
    let tcb: serde_json::Value = serde_json::from_str(&collateral.tcb_info).ok()?;
    let t = tcb.get("nextUpdate")?.as_str()?;
    // "YYYY-MM-DDTHH:MM:SSZ"
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (proleptic Gregorian), as in H. Hinnant's algorithm.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Parse a quote without verifying it (to show what it claims; never trust the result).
pub fn parse_quote(bytes: &[u8]) -> Result<Quote, TdxVerifyError> {
    Quote::parse(bytes).map_err(|e| TdxVerifyError::Quote(format!("{e:#}")))
}

/// Verify `quote` with `collateral` at time `now_secs` (seconds since the epoch).
pub fn verify_tdx(
    quote: &[u8],
    collateral: &QuoteCollateralV3,
    now_secs: u64,
    policy: &TdxPolicy,
) -> Result<VerifiedTd, TdxVerifyError> {
    let verified = dcap_qvl::verify::verify(quote, collateral, now_secs)
        .map_err(|e| TdxVerifyError::Quote(format!("{e:#}")))?;
    let td = verified.report.as_td10().ok_or(TdxVerifyError::NotTd)?;
    if !policy.accepted_tcb_status.contains(&verified.status) {
        return Err(TdxVerifyError::TcbStatus {
            status: verified.status,
            accepted: policy.accepted_tcb_status.clone(),
            advisories: verified.advisory_ids,
        });
    }
    let v = VerifiedTd {
        tcb_status: verified.status,
        mrtd: td.mr_td,
        rtmr: [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3],
        mr_config_id: td.mr_config_id,
        report_data: td.report_data,
    };
    check_td(&v, td.td_attributes, policy)?;
    Ok(v)
}

/// The policy checks on the registers of a quote whose signature chain verified.
pub fn check_td(
    v: &VerifiedTd,
    td_attributes: [u8; 8],
    policy: &TdxPolicy,
) -> Result<(), TdxVerifyError> {
    // TD_ATTRIBUTES bit 0: DEBUG (the TD's state is visible to the host).
    if td_attributes[0] & 1 != 0 {
        return Err(TdxVerifyError::Debug(hex::encode(td_attributes)));
    }
    let mismatch = |register, expected: &[u8], actual: &[u8]| {
        if expected == actual {
            Ok(())
        } else {
            Err(TdxVerifyError::Mismatch {
                register,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            })
        }
    };
    if let Some(e) = &policy.mrtd {
        mismatch("MRTD", e, &v.mrtd)?;
    }
    const RTMR: [&str; 4] = ["RTMR0", "RTMR1", "RTMR2", "RTMR3"];
    for (i, expected) in policy.rtmr.iter().enumerate() {
        if let Some(e) = expected {
            mismatch(RTMR[i], e, &v.rtmr[i])?;
        }
    }
    if let Some(e) = &policy.mr_config_id {
        mismatch("MRCONFIGID", e, &v.mr_config_id)?;
    }
    if let Some(e) = &policy.report_data {
        mismatch("REPORTDATA", e, &v.report_data)?;
    }
    Ok(())
}

/// Verify Trustee `tdx` evidence: the quote as [`verify_tdx`], then, when the evidence
/// carries a CC event log, that it replays to the quoted RTMRs.
pub fn verify_tdx_evidence(
    evidence: &super::TdxEvidence,
    collateral: &QuoteCollateralV3,
    now_secs: u64,
    policy: &TdxPolicy,
) -> Result<VerifiedTd, TdxVerifyError> {
    use base64::Engine as _;
    let b64 = |v: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| TdxVerifyError::Quote("evidence field is not base64".into()))
    };
    let verified = verify_tdx(&b64(&evidence.quote)?, collateral, now_secs, policy)?;
    if let Some(log) = &evidence.cc_eventlog {
        verify_ccel(&b64(log)?, &verified.rtmr)?;
    }
    Ok(verified)
}

/// Check that a CC event log (the ACPI CCEL table: TCG crypto-agile format, sha384,
/// with the MR index in the PCR-index field: 1..=4 for RTMR0..3) replays to the quoted
/// RTMRs it touches.
pub fn verify_ccel(ccel: &[u8], rtmr: &[[u8; 48]; 4]) -> Result<(), TdxVerifyError> {
    const RTMR: [&str; 4] = ["RTMR0", "RTMR1", "RTMR2", "RTMR3"];
    let log = crate::tcg::FirmwareLog::parse(ccel)?;
    if let Some(i) = log.events.iter().position(|e| e.sha384.is_none()) {
        return Err(crate::tcg::FirmwareLogError::MissingDigest {
            bank: "sha384",
            event: i + 1,
        }
        .into());
    }
    let replayed = log.replay_sha384();
    for index in log.pcrs() {
        // MR index 0 is MRTD, which firmware cannot extend; anything past 4 is no RTMR.
        let Some(i) = (index as usize).checked_sub(1).filter(|i| *i < 4) else {
            return Err(crate::tcg::FirmwareLogError::Pcr {
                pcr: index,
                event: 0,
            }
            .into());
        };
        if replayed[index as usize] != rtmr[i] {
            return Err(TdxVerifyError::EventLog {
                register: RTMR[i],
                log: hex::encode(replayed[index as usize]),
                quoted: hex::encode(rtmr[i]),
            });
        }
    }
    Ok(())
}
