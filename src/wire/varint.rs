//! [`read_varint`]: the one protobuf varint reader of the engine and the load
//! generator (ingest length prefixes, the ingest fast path for deltas,
//! loadgen's zero-copy scan of server messages).
//!
//! Pure functions over byte slices, run by whichever thread reads the bytes.
//! Never panics on peer bytes. Follows prost's `decode_varint` rules: at most
//! ten bytes, the tenth at most 1 (no value over `u64::MAX`); overlong
//! encodings of small values are accepted.

/// A protobuf varint is at most 10 bytes for a `u64`.
pub const MAX_VARINT_BYTES: usize = 10;

/// Why [`read_varint`] read no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The bytes end before the varint does (more may come).
    Truncated,
    /// Longer than ten bytes, or over `u64::MAX`: never a valid varint.
    TooLong,
}

/// Reads one varint at `buf[*pos..]` and moves `*pos` past it. On an error
/// `*pos` is unspecified.
// NB: `inline(always)` (so that it inlines into loadgen, another crate), the
// one-byte fast path and the word-at-a-time decode of longer varints:
// loadgen's `examples/verify_cost.rs` and a profile of a live run spent a
// third of the client thread in out-of-line, byte-at-a-time varints (a
// timestamp is 9 bytes, a checksum 5).
#[inline(always)]
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, VarintError> {
    match buf.get(*pos) {
        Some(&b) if b < 0x80 => {
            *pos += 1;
            Ok(u64::from(b))
        }
        Some(_) => read_varint_long(buf, pos),
        None => Err(VarintError::Truncated),
    }
}

/// The 7-bit groups of 8 varint bytes (continuation bits ignored), packed
/// into 56 bits.
#[inline(always)]
fn pack7(w: u64) -> u64 {
    let x = w & 0x7f7f_7f7f_7f7f_7f7f;
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// [`read_varint`] past its first byte (`*pos < buf.len()`: checked there).
#[inline(always)]
fn read_varint_long(buf: &[u8], pos: &mut usize) -> Result<u64, VarintError> {
    let rest = &buf[*pos..];
    let (w, have) = match rest.first_chunk::<8>() {
        Some(w) => (u64::from_le_bytes(*w), 8),
        None => {
            // Near the end of the buffer, zero padding stands in for the
            // missing bytes (a padded zero must not end the varint: checked
            // below).
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            (u64::from_le_bytes(word), rest.len())
        }
    };
    let ends = !w & 0x8080_8080_8080_8080;
    if ends != 0 {
        // The first byte without a continuation bit ends the varint.
        let len = (ends.trailing_zeros() as usize + 1) / 8;
        if len > have {
            return Err(VarintError::Truncated);
        }
        *pos += len;
        let keep = if len == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * len)) - 1
        };
        return Ok(pack7(w & keep));
    }
    // 9 or 10 bytes; the tenth holds bit 63 only.
    match (rest.get(8), rest.get(9)) {
        (Some(&b8), _) if b8 < 0x80 => {
            *pos += 9;
            Ok(pack7(w) | (u64::from(b8) << 56))
        }
        (Some(&b8), Some(&b9)) if b9 <= 1 => {
            *pos += 10;
            Ok(pack7(w) | (u64::from(b8 & 0x7f) << 56) | (u64::from(b9) << 63))
        }
        (Some(_), Some(_)) => Err(VarintError::TooLong),
        _ => Err(VarintError::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn varints_of_every_length_match_prost() {
        let mut values = vec![0u64, 1, 127, 128, 300, u64::MAX, (-5i64) as u64];
        for bits in 0..64 {
            values.push(1u64 << bits);
            values.push((1u64 << bits) - 1);
        }
        for v in values {
            let mut enc = Vec::new();
            prost::encoding::encode_varint(v, &mut enc);
            let mut pos = 0;
            assert_eq!(read_varint(&enc, &mut pos), Ok(v), "{v}");
            assert_eq!(pos, enc.len());
            let mut pos = 0;
            assert_eq!(
                read_varint(&enc[..enc.len() - 1], &mut pos),
                Err(VarintError::Truncated)
            );
        }
        // The tenth byte holds bit 63 only (prost: 2 is an overflow).
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(read_varint(&over, &mut 0), Err(VarintError::TooLong));
        assert_eq!(read_varint(&[0xff; 12], &mut 0), Err(VarintError::TooLong));
        assert_eq!(read_varint(&[0xff; 9], &mut 0), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[], &mut 0), Err(VarintError::Truncated));
    }

    proptest! {
        /// On any bytes at any offset: the value and length prost reads, or an
        /// error where prost fails (truncated when fewer than ten bytes remain
        /// and none ends the varint, else too long).
        #[test]
        fn agrees_with_prost_on_any_bytes(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0x80u8..=0xff, Just(0xffu8), 0u8..=2],
                0..16,
            ),
            start in 0usize..4,
        ) {
            let start = start.min(bytes.len());
            let mut pos = start;
            let ours = read_varint(&bytes, &mut pos);
            let mut theirs_buf = &bytes[start..];
            let before = theirs_buf.len();
            match prost::encoding::decode_varint(&mut theirs_buf) {
                Ok(v) => {
                    prop_assert_eq!(ours, Ok(v));
                    prop_assert_eq!(pos - start, before - theirs_buf.len());
                }
                Err(_) => {
                    let rest = &bytes[start..];
                    let want = if rest.len() < MAX_VARINT_BYTES
                        && rest.iter().all(|b| b & 0x80 != 0)
                    {
                        VarintError::Truncated
                    } else {
                        VarintError::TooLong
                    };
                    prop_assert_eq!(ours, Err(want));
                }
            }
        }
    }
}
