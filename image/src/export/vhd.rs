//! A fixed-size VHD (Microsoft's "Virtual Hard Disk Image Format Specification"): the
//! raw disk followed by a 512-byte footer. Azure takes only this form, with the
//! virtual size a whole number of MiB. Checked with `qemu-img info` in the tests.

/// The footer's cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// The footer's length.
pub const FOOTER: usize = 512;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00 UTC).
const VHD_EPOCH: u64 = 946_684_800;

/// The CHS geometry of a disk of `sectors` (the specification's algorithm).
fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65_535 * 16 * 255);
    let (mut spt, mut heads, mut cyl_heads);
    if total >= 65_535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cyl_heads = total / spt;
    } else {
        spt = 17;
        cyl_heads = total / spt;
        heads = cyl_heads.div_ceil(1024).max(4);
        if cyl_heads >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cyl_heads = total / spt;
        }
        if cyl_heads >= heads * 1024 {
            spt = 63;
            heads = 16;
            cyl_heads = total / spt;
        }
    }
    ((cyl_heads / heads) as u16, heads as u8, spt as u8)
}

/// The footer of a fixed VHD of `size` bytes: `unix_time` is the creation time
/// (clamped to the VHD epoch), `unique_id` its identifier.
pub fn footer(size: u64, unix_time: u64, unique_id: [u8; 16]) -> [u8; FOOTER] {
    let mut f = [0u8; FOOTER];
    f[..8].copy_from_slice(COOKIE);
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // no dynamic header
    let stamp = u32::try_from(unix_time.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"cvm ");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size / 512);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed
    f[68..84].copy_from_slice(&unique_id);
    let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_the_complement_of_the_byte_sum() {
        let f = footer(64 << 20, 0, [7; 16]);
        let stored = u32::from_be_bytes([f[64], f[65], f[66], f[67]]);
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        let sum: u32 = zeroed.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(stored, !sum);
    }

    #[test]
    fn geometry_follows_the_specification() {
        // 127 MiB fits 17 sectors per track; 320 MiB needs 63; the largest is capped.
        assert_eq!(geometry(260_096), (1_019, 15, 17));
        assert_eq!(geometry(655_360), (650, 16, 63));
        assert_eq!(geometry(65_535 * 16 * 255 + 1), (65_535, 16, 255));
    }
}
