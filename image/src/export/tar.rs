//! One file in a GNU tar archive of the old GNU format (`tar --format=oldgnu -S`), the
//! form Google Compute Engine imports a `disk.raw` from: a sparse member (type `S`) whose
//! map lists the non-zero 512-byte-aligned runs, so the archive holds only the data.
//! Checked with GNU `tar -tvf` and a full extraction in the tests.

use std::io::{self, Read, Seek, SeekFrom, Write};

const BLOCK: u64 = 512;
/// Sparse entries in the main header, and in each extension header.
const IN_HEADER: usize = 4;
const IN_EXTENSION: usize = 21;

/// A numeric field: octal with a NUL when it fits, else GNU's base-256 form.
fn number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if value < 1u64 << (3 * digits as u32) {
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
    }
}

/// The runs of `len` bytes of `data` that are not all zeros: (offset, length), both
/// multiples of 512 except a last run that ends at the file's end.
pub fn data_runs<R: Read + Seek>(data: &mut R, len: u64) -> io::Result<Vec<(u64, u64)>> {
    const CHUNK: usize = 1 << 20;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    data.seek(SeekFrom::Start(0))?;
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        data.read_exact(&mut buf[..n])?;
        for (i, block) in buf[..n].chunks(BLOCK as usize).enumerate() {
            if block.iter().all(|b| *b == 0) {
                continue;
            }
            let start = at + i as u64 * BLOCK;
            let end = start + block.len() as u64;
            match runs.last_mut() {
                Some((s, l)) if *s + *l == start => *l = end - *s,
                _ => runs.push((start, end - start)),
            }
        }
        at += n as u64;
    }
    Ok(runs)
}

fn checksum(header: &mut [u8; 512]) {
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
}

fn sparse_entry(slot: &mut [u8], (offset, len): (u64, u64)) {
    number(&mut slot[..12], offset);
    number(&mut slot[12..24], len);
}

/// Writes a sparse member `name` of `len` bytes read from `data`, with modification
/// time `mtime`, and the archive's end, to `out`.
pub fn write_sparse<R: Read + Seek, W: Write>(
    out: &mut W,
    name: &str,
    data: &mut R,
    len: u64,
    mtime: u64,
) -> io::Result<()> {
    let mut runs = data_runs(data, len)?;
    let stored: u64 = runs.iter().map(|(_, l)| l).sum();
    // A file that ends in a hole ends with an empty run at its size, so the extracted
    // file gets its full length.
    if runs.last().is_none_or(|(s, l)| s + l < len) {
        runs.push((len, 0));
    }
    if name.len() > 99 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "tar member name too long",
        ));
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    number(&mut h[100..108], 0o644);
    number(&mut h[108..116], 0);
    number(&mut h[116..124], 0);
    number(&mut h[124..136], stored);
    number(&mut h[136..148], mtime);
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    for (i, run) in runs.iter().take(IN_HEADER).enumerate() {
        sparse_entry(&mut h[386 + 24 * i..386 + 24 * (i + 1)], *run);
    }
    let mut rest = runs.get(IN_HEADER..).unwrap_or_default();
    h[482] = u8::from(!rest.is_empty());
    number(&mut h[483..495], len);
    checksum(&mut h);
    out.write_all(&h)?;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(rest.len().min(IN_EXTENSION));
        let mut e = [0u8; 512];
        for (i, run) in now.iter().enumerate() {
            sparse_entry(&mut e[24 * i..24 * (i + 1)], *run);
        }
        e[504] = u8::from(!later.is_empty());
        out.write_all(&e)?;
        rest = later;
    }
    let mut buf = vec![0u8; 1 << 20];
    for (offset, run_len) in runs {
        data.seek(SeekFrom::Start(offset))?;
        let mut left = run_len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            data.read_exact(&mut buf[..n])?;
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    let pad = (BLOCK - stored % BLOCK) % BLOCK;
    out.write_all(&vec![0u8; pad as usize])?;
    // Two zero blocks end the archive.
    out.write_all(&[0u8; 1024])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Cursor;

    #[test]
    fn runs_skip_zero_blocks_and_merge_neighbours() {
        let mut d = vec![0u8; 4096];
        d[0] = 1;
        d[600] = 1;
        d[3000] = 1;
        let runs = data_runs(&mut Cursor::new(&d), d.len() as u64).unwrap();
        assert_eq!(runs, vec![(0, 1024), (2560, 512)]);
    }

    #[test]
    fn numbers_switch_to_base_256_when_octal_is_too_short() {
        let mut f = [0u8; 12];
        number(&mut f, (1 << 33) - 1);
        assert_eq!(&f, b"77777777777\0");
        number(&mut f, 1 << 33);
        assert_eq!(f[0], 0x80);
        number(&mut f, 0o777);
        assert_eq!(&f, b"00000000777\0");
    }
}
