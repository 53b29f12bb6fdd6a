//! An SNP report in the guest, over 64 bytes of report data: through configfs-tsm when
//! the kernel offers it (Linux ≥ 6.7), else through `/dev/sev-guest`
//! (SNP_GET_EXT_REPORT, via the `sev` crate). The host's certificate table (VCEK or
//! VLEK, ASK, ARK), when it supplies one, travels with the report.

use std::path::Path;

use super::{CertTableEntry, CertType, SnpEvidence, parse_report};
use crate::tsm::{self, TsmError};

/// An SNP report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum SnpAttesterError {
    /// Neither configfs-tsm with the `sev_guest` provider nor `/dev/sev-guest`.
    #[error("not an SEV-SNP guest: {tsm}, and /dev/sev-guest is missing")]
    NotSnp {
        /// Why configfs-tsm could not be used.
        tsm: TsmError,
    },
    /// configfs-tsm failed in a way that is not "no SNP here".
    #[error(transparent)]
    Tsm(TsmError),
    /// The `/dev/sev-guest` request failed.
    #[error("SNP_GET_EXT_REPORT through /dev/sev-guest failed: {0}")]
    Device(String),
    /// The firmware returned something that is not a report.
    #[error(transparent)]
    Parse(#[from] super::SnpParseError),
    /// The host's certificate table is malformed.
    #[error("SNP certificate table from the host is malformed: {0}")]
    CertTable(&'static str),
}

/// The legacy SEV guest device (also present, alongside configfs-tsm, in SNP guests).
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// Request a report over `report_data` at `vmpl` (None: the guest's own VMPL).
pub fn report(report_data: &[u8; 64], vmpl: Option<u32>) -> Result<SnpEvidence, SnpAttesterError> {
    match tsm::report(
        Path::new(tsm::TSM_REPORT_DIR),
        "sev_guest",
        report_data,
        vmpl,
    ) {
        Ok(r) => Ok(SnpEvidence {
            attestation_report: parse_report(&r.outblob)?,
            cert_chain: r.auxblob.as_deref().map(parse_cert_table).transpose()?,
        }),
        Err(e @ (TsmError::Unavailable(_) | TsmError::NoProvider | TsmError::Provider { .. })) => {
            if !Path::new(SEV_GUEST_DEVICE).exists() {
                return Err(SnpAttesterError::NotSnp { tsm: e });
            }
            let mut fw = sev::firmware::guest::Firmware::open()
                .map_err(|e| SnpAttesterError::Device(e.to_string()))?;
            let (bytes, certs) = fw
                .get_ext_report(None, Some(*report_data), vmpl)
                .map_err(|e| SnpAttesterError::Device(e.to_string()))?;
            Ok(SnpEvidence {
                attestation_report: parse_report(&bytes)?,
                cert_chain: certs,
            })
        }
        Err(e) => Err(SnpAttesterError::Tsm(e)),
    }
}

/// A GUID in its binary (mixed-endian) layout, from its text form.
fn guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, out) in b.iter_mut().enumerate() {
        *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// Parse the GHCB certificate table: (GUID, offset, length) entries up to an all-zero
/// one, offsets from the table's start. Unknown GUIDs are skipped.
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertTableEntry>, SnpAttesterError> {
    let known = [
        (guid("63da758d-e664-4564-adc5-f4b93be8accd"), CertType::VCEK),
        (guid("a8074bc2-a25a-483e-aae6-39c045a0b8a1"), CertType::VLEK),
        (guid("4ab7b379-bbac-4fe4-a02f-05aef327c782"), CertType::ASK),
        (guid("c0b406a4-a803-4952-9743-3fb6014cd0ae"), CertType::ARK),
    ];
    let mut entries = Vec::new();
    for i in 0.. {
        let at = i * 24;
        let e = table
            .get(at..at + 24)
            .ok_or(SnpAttesterError::CertTable("no terminating entry"))?;
        if e.iter().all(|&b| b == 0) {
            break;
        }
        let offset = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
        let length = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
        let data = offset
            .checked_add(length)
            .and_then(|end| table.get(offset..end))
            .ok_or(SnpAttesterError::CertTable(
                "entry points outside the table",
            ))?;
        if let Some((_, t)) = known.iter().find(|(g, _)| g[..] == e[..16]) {
            entries.push(CertTableEntry {
                cert_type: t.clone(),
                data: data.to_vec(),
            });
        }
        if entries.len() > 16 {
            return Err(SnpAttesterError::CertTable("too many entries"));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_table_round_trip_and_bounds() {
        let vcek = guid("63da758d-e664-4564-adc5-f4b93be8accd");
        assert_eq!(vcek[..4], [0x8d, 0x75, 0xda, 0x63]);
        let mut table = Vec::new();
        table.extend_from_slice(&vcek);
        table.extend_from_slice(&48u32.to_le_bytes());
        table.extend_from_slice(&3u32.to_le_bytes());
        table.extend_from_slice(&[0; 24]);
        table.extend_from_slice(b"abc");
        let entries = parse_cert_table(&table).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].cert_type.clone(), entries[0].data.as_slice()),
            (CertType::VCEK, &b"abc"[..])
        );
        // Out of bounds and unterminated tables are refused, not panicked on.
        let mut bad = table.clone();
        bad[20] = 0xff;
        assert!(parse_cert_table(&bad).is_err());
        assert!(parse_cert_table(&table[..30]).is_err());
    }
}
