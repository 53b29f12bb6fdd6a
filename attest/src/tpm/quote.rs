//! Parsers for the TPM structures in a quote (TPM 2.0 Part 2, big-endian): TPMS_ATTEST
//! of type TPM_ST_ATTEST_QUOTE and TPMT_SIGNATURE. They take untrusted bytes, never
//! panic, and reject trailing bytes.

/// TPM_GENERATED_VALUE: the TPM made this structure.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// TPM_ALG_SHA256.
pub const ALG_SHA256: u16 = 0x000b;
/// TPM_ALG_RSASSA.
pub const ALG_RSASSA: u16 = 0x0014;

/// A quote's TPMS_ATTEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// Name of the key that signed (qualifiedSigner).
    pub signer: Vec<u8>,
    /// The caller's qualifying data (the nonce).
    pub extra_data: Vec<u8>,
    /// TPM reset count (changes on every TPM reset).
    pub reset_count: u32,
    /// The PCR selection: (hash algorithm, selected PCR indices).
    pub selection: Vec<(u16, Vec<u32>)>,
    /// Digest over the selected PCR values, in selection order.
    pub pcr_digest: Vec<u8>,
}

/// A TPMT_SIGNATURE with an RSA scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaSignature {
    /// TPM_ALG_RSASSA or TPM_ALG_RSAPSS.
    pub scheme: u16,
    /// The hash algorithm.
    pub hash: u16,
    /// The signature bytes.
    pub sig: Vec<u8>,
}

/// A quote structure that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuoteParseError {
    /// The bytes end inside a field.
    #[error("TPM structure truncated in {0}")]
    Truncated(&'static str),
    /// Bytes after the structure.
    #[error("TPM structure has {0} trailing bytes")]
    Trailing(usize),
    /// Not made by a TPM.
    #[error("TPMS_ATTEST magic is {0:#x}, not TPM_GENERATED_VALUE")]
    Magic(u32),
    /// Not a quote.
    #[error("TPMS_ATTEST type is {0:#x}, not TPM_ST_ATTEST_QUOTE")]
    Type(u16),
    /// A key type other than RSA.
    #[error("TPMT_PUBLIC type is {0:#x}, not TPM_ALG_RSA")]
    KeyType(u16),
    /// A name algorithm other than sha256.
    #[error("TPMT_PUBLIC nameAlg is {0:#x}, not sha256")]
    NameAlg(u16),
    /// A signature scheme this verifier does not accept.
    #[error("signature algorithm {0:#x} is not RSASSA")]
    SignatureAlg(u16),
}

/// A big-endian cursor over untrusted TPM bytes.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<&'a [u8], QuoteParseError> {
        if self.0.len() < n {
            return Err(QuoteParseError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, QuoteParseError> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, QuoteParseError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, QuoteParseError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn sized(&mut self, what: &'static str) -> Result<&'a [u8], QuoteParseError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    pub(crate) fn end(self) -> Result<(), QuoteParseError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(QuoteParseError::Trailing(n)),
        }
    }
}

/// Parse a marshalled TPMS_ATTEST that must be a quote.
pub fn parse_quote(bytes: &[u8]) -> Result<QuoteInfo, QuoteParseError> {
    let mut r = Reader(bytes);
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED {
        return Err(QuoteParseError::Magic(magic));
    }
    let kind = r.u16("type")?;
    if kind != ST_ATTEST_QUOTE {
        return Err(QuoteParseError::Type(kind));
    }
    let signer = r.sized("qualifiedSigner")?.to_vec();
    let extra_data = r.sized("extraData")?.to_vec();
    r.take(8, "clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    r.take(4 + 1, "clockInfo")?;
    r.take(8, "firmwareVersion")?;
    let count = r.u32("pcrSelect.count")?;
    if count > 16 {
        return Err(QuoteParseError::Truncated("pcrSelect (too many banks)"));
    }
    let mut selection = Vec::new();
    for _ in 0..count {
        let hash = r.u16("pcrSelect.hash")?;
        let size = r.u8("pcrSelect.sizeofSelect")? as usize;
        let bits = r.take(size, "pcrSelect.pcrSelect")?;
        let mut pcrs = Vec::new();
        for (byte, b) in bits.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    pcrs.push((byte * 8 + bit) as u32);
                }
            }
        }
        selection.push((hash, pcrs));
    }
    let pcr_digest = r.sized("pcrDigest")?.to_vec();
    r.end()?;
    Ok(QuoteInfo {
        signer,
        extra_data,
        reset_count,
        selection,
        pcr_digest,
    })
}

/// Parse a marshalled TPMT_SIGNATURE with an RSASSA scheme.
pub fn parse_signature(bytes: &[u8]) -> Result<RsaSignature, QuoteParseError> {
    let mut r = Reader(bytes);
    let scheme = r.u16("sigAlg")?;
    if scheme != ALG_RSASSA {
        return Err(QuoteParseError::SignatureAlg(scheme));
    }
    let hash = r.u16("hash")?;
    let sig = r.sized("signature")?.to_vec();
    r.end()?;
    Ok(RsaSignature { scheme, hash, sig })
}
