//! Parsing and replaying the crypto-agile firmware event log.

use sha2::{Digest as _, Sha256, Sha384};

/// TCG event types (PC Client PFP §10.4.1) that reference values look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType(pub u32);

impl EventType {
    /// EV_NO_ACTION: informational, never extended.
    pub const NO_ACTION: Self = Self(0x3);
    /// EV_SEPARATOR.
    pub const SEPARATOR: Self = Self(0x4);
    /// EV_EVENT_TAG (the Linux EFI stub tags the initrd and load options with it).
    pub const EVENT_TAG: Self = Self(0x6);
    /// EV_EFI_BOOT_SERVICES_APPLICATION: a PE image, digest = its Authenticode hash.
    pub const EFI_BOOT_SERVICES_APPLICATION: Self = Self(0x8000_0003);
    /// EV_EFI_ACTION.
    pub const EFI_ACTION: Self = Self(0x8000_0007);

    /// The specification's name of this type, when it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "EV_PREBOOT_CERT",
            0x1 => "EV_POST_CODE",
            0x3 => "EV_NO_ACTION",
            0x4 => "EV_SEPARATOR",
            0x5 => "EV_ACTION",
            0x6 => "EV_EVENT_TAG",
            0x7 => "EV_S_CRTM_CONTENTS",
            0x8 => "EV_S_CRTM_VERSION",
            0x9 => "EV_CPU_MICROCODE",
            0xa => "EV_PLATFORM_CONFIG_FLAGS",
            0xb => "EV_TABLE_OF_DEVICES",
            0xc => "EV_COMPACT_HASH",
            0xd => "EV_IPL",
            0xe => "EV_IPL_PARTITION_DATA",
            0xf => "EV_NONHOST_CODE",
            0x10 => "EV_NONHOST_CONFIG",
            0x11 => "EV_NONHOST_INFO",
            0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
            0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
            0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
            0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
            0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
            0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
            0x8000_0006 => "EV_EFI_GPT_EVENT",
            0x8000_0007 => "EV_EFI_ACTION",
            0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
            0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
            0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
            0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
            0x8000_000c => "EV_EFI_VARIABLE_BOOT2",
            0x8000_0010 => "EV_EFI_HCRTM_EVENT",
            0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
            _ => return None,
        })
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

/// TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512.
const ALG_SHA1: u16 = 0x0004;
const ALG_SHA256: u16 = 0x000b;
const ALG_SHA384: u16 = 0x000c;
const ALG_SHA512: u16 = 0x000d;

/// Most events a log may hold (OVMF writes about 40).
pub const MAX_EVENTS: usize = 16_384;
/// Largest event data accepted.
pub const MAX_EVENT_DATA: usize = 1 << 20;
/// Number of PCRs.
const PCRS: usize = 24;

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareEvent {
    /// The PCR it was extended into.
    pub pcr: u32,
    /// Its type.
    pub event_type: EventType,
    /// Its sha256 digest, when the log has that bank (a vTPM log does; CCEL does not).
    pub sha256: Option<[u8; 32]>,
    /// Its sha384 digest, when the log has that bank.
    pub sha384: Option<[u8; 48]>,
    /// The event data.
    pub data: Vec<u8>,
}

/// A parsed firmware event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareLog {
    /// The measured events, in log order (the header and EV_NO_ACTION events are not
    /// in this list).
    pub events: Vec<FirmwareEvent>,
    /// The locality the TPM was started in (from the StartupLocality event): PCR 0
    /// starts from this value instead of zero.
    pub startup_locality: u8,
}

/// A firmware log that does not parse or does not replay.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FirmwareLogError {
    /// The bytes end inside a field.
    #[error("firmware event log truncated in {what} of event {event}")]
    Truncated {
        /// Which field.
        what: &'static str,
        /// Index of the event (0 is the header).
        event: usize,
    },
    /// Not a crypto-agile log.
    #[error("firmware event log header is not a TCG2 crypto-agile Spec ID event")]
    Header,
    /// An algorithm the header does not declare, or a bad digest size.
    #[error(
        "firmware event log: algorithm {alg:#06x} in event {event} is not declared in the header"
    )]
    Algorithm {
        /// TPM_ALG_ID.
        alg: u16,
        /// Event index.
        event: usize,
    },
    /// The log has neither a sha256 nor a sha384 bank.
    #[error("firmware event log has neither a sha256 nor a sha384 bank")]
    NoBank,
    /// An event lacks a digest of a bank the header declares.
    #[error("firmware event log: event {event} has no {bank} digest")]
    MissingDigest {
        /// The bank.
        bank: &'static str,
        /// Event index.
        event: usize,
    },
    /// A PCR index out of range.
    #[error("firmware event log: event {event} extends PCR {pcr}")]
    Pcr {
        /// The PCR.
        pcr: u32,
        /// Event index.
        event: usize,
    },
    /// Too many events or too much event data.
    #[error("firmware event log is too large: {0}")]
    TooLarge(&'static str),
    /// The log does not replay to a quoted PCR.
    #[error("firmware event log does not replay to PCR {pcr}: log gives {log}, quote has {quoted}")]
    Replay {
        /// The PCR.
        pcr: u32,
        /// Hex of the replayed value.
        log: String,
        /// Hex of the quoted value.
        quoted: String,
    },
}

struct Reader<'a> {
    bytes: &'a [u8],
    event: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FirmwareLogError> {
        if self.bytes.len() < n {
            return Err(FirmwareLogError::Truncated {
                what,
                event: self.event,
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, FirmwareLogError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FirmwareLogError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

impl FirmwareLog {
    /// Parse a crypto-agile log (the kernel's `binary_bios_measurements`). Trailing
    /// zero bytes (unused log area some firmware exposes) end the log.
    pub fn parse(bytes: &[u8]) -> Result<Self, FirmwareLogError> {
        let mut r = Reader { bytes, event: 0 };
        // Header: a TCG_PCClientPCREvent (SHA-1 format) holding the Spec ID event.
        let _pcr = r.u32("pcrIndex")?;
        let kind = r.u32("eventType")?;
        r.take(20, "digest")?;
        let size = r.u32("eventSize")? as usize;
        if kind != EventType::NO_ACTION.0 || size > MAX_EVENT_DATA {
            return Err(FirmwareLogError::Header);
        }
        let mut spec = Reader {
            bytes: r.take(size, "Spec ID event")?,
            event: 0,
        };
        if spec.take(16, "signature")? != SPEC_ID_SIGNATURE {
            return Err(FirmwareLogError::Header);
        }
        spec.take(4 + 4, "platformClass/version/uintnSize")?;
        let count = spec.u32("numberOfAlgorithms")? as usize;
        if count == 0 || count > 8 {
            return Err(FirmwareLogError::Header);
        }
        let mut algs = Vec::with_capacity(count);
        for _ in 0..count {
            let alg = spec.u16("algorithmId")?;
            let size = spec.u16("digestSize")? as usize;
            algs.push((alg, size));
        }
        let has256 = algs.iter().any(|&(a, s)| a == ALG_SHA256 && s == 32);
        let has384 = algs.iter().any(|&(a, s)| a == ALG_SHA384 && s == 48);
        if !has256 && !has384 {
            return Err(FirmwareLogError::NoBank);
        }

        let mut events = Vec::new();
        let mut startup_locality = 0;
        let mut total_data = 0usize;
        while !r.bytes.is_empty() && r.bytes.iter().any(|&b| b != 0) {
            r.event += 1;
            if r.event > MAX_EVENTS {
                return Err(FirmwareLogError::TooLarge("too many events"));
            }
            let pcr = r.u32("pcrIndex")?;
            let event_type = EventType(r.u32("eventType")?);
            let n = r.u32("digests.count")? as usize;
            if n > 8 {
                return Err(FirmwareLogError::Truncated {
                    what: "digests.count",
                    event: r.event,
                });
            }
            let mut sha256 = None;
            let mut sha384 = None;
            for _ in 0..n {
                let alg = r.u16("digests.hashAlg")?;
                let size = algs
                    .iter()
                    .find(|&&(a, _)| a == alg)
                    .map(|&(_, s)| s)
                    .ok_or(FirmwareLogError::Algorithm {
                        alg,
                        event: r.event,
                    })?;
                let digest = r.take(size, "digests.digest")?;
                match alg {
                    ALG_SHA256 => sha256 = digest.try_into().ok(),
                    ALG_SHA384 => sha384 = digest.try_into().ok(),
                    ALG_SHA1 | ALG_SHA512 => {}
                    _ => {}
                }
            }
            let size = r.u32("eventSize")? as usize;
            total_data = total_data.saturating_add(size);
            if size > MAX_EVENT_DATA || total_data > 16 * MAX_EVENT_DATA {
                return Err(FirmwareLogError::TooLarge("event data"));
            }
            let data = r.take(size, "event")?.to_vec();
            if event_type == EventType::NO_ACTION {
                if data.len() == 17 && data[..16] == STARTUP_LOCALITY_SIGNATURE[..] {
                    startup_locality = data[16];
                }
                continue;
            }
            if pcr as usize >= PCRS {
                return Err(FirmwareLogError::Pcr {
                    pcr,
                    event: r.event,
                });
            }
            // Every event carries every bank the header declares.
            if has256 && sha256.is_none() {
                return Err(FirmwareLogError::MissingDigest {
                    bank: "sha256",
                    event: r.event,
                });
            }
            if has384 && sha384.is_none() {
                return Err(FirmwareLogError::MissingDigest {
                    bank: "sha384",
                    event: r.event,
                });
            }
            events.push(FirmwareEvent {
                pcr,
                event_type,
                sha256,
                sha384,
                data,
            });
        }
        Ok(Self {
            events,
            startup_locality,
        })
    }

    /// The sha256 values the log replays to, for every PCR (untouched PCRs stay zero;
    /// PCR 0 starts from the startup locality). Zero everywhere for a log without the
    /// sha256 bank.
    pub fn replay_sha256(&self) -> [[u8; 32]; PCRS] {
        let mut pcrs = [[0u8; 32]; PCRS];
        pcrs[0][31] = self.startup_locality;
        for e in &self.events {
            if let (Some(p), Some(d)) = (pcrs.get_mut(e.pcr as usize), &e.sha256) {
                *p = extend_sha256(p, d);
            }
        }
        pcrs
    }

    /// The sha384 values the log replays to, as [`Self::replay_sha256`].
    pub fn replay_sha384(&self) -> [[u8; 48]; PCRS] {
        let mut pcrs = [[0u8; 48]; PCRS];
        pcrs[0][47] = self.startup_locality;
        for e in &self.events {
            if let (Some(p), Some(d)) = (pcrs.get_mut(e.pcr as usize), &e.sha384) {
                *p = extend_sha384(p, d);
            }
        }
        pcrs
    }

    /// The PCRs this log extends, ascending.
    pub fn pcrs(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.events.iter().map(|e| e.pcr).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Check that the log replays to the quoted sha256 value of every PCR it touches.
    pub fn verify_replay(&self, quoted: &[[u8; 32]]) -> Result<(), FirmwareLogError> {
        if let Some(i) = self.events.iter().position(|e| e.sha256.is_none()) {
            return Err(FirmwareLogError::MissingDigest {
                bank: "sha256",
                event: i + 1,
            });
        }
        let replayed = self.replay_sha256();
        for pcr in self.pcrs() {
            let i = pcr as usize;
            let Some(q) = quoted.get(i) else {
                return Err(FirmwareLogError::Pcr { pcr, event: 0 });
            };
            if replayed[i] != *q {
                return Err(FirmwareLogError::Replay {
                    pcr,
                    log: hex::encode(replayed[i]),
                    quoted: hex::encode(q),
                });
            }
        }
        Ok(())
    }

    /// The events extended into `pcr`, in order.
    pub fn events_of(&self, pcr: u32) -> impl Iterator<Item = &FirmwareEvent> {
        self.events.iter().filter(move |e| e.pcr == pcr)
    }
}

/// PCR extend in the sha256 bank.
pub fn extend_sha256(pcr: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// PCR extend in the sha384 bank.
pub fn extend_sha384(pcr: &[u8; 48], digest: &[u8; 48]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}
