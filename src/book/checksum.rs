//! The book checksum of PROTOCOL §5: CRC-32 (IEEE, as `crc32fast` computes
//! it) over the top [`CHECKSUM_DEPTH`] bid levels, best first, then the top
//! [`CHECKSUM_DEPTH`] ask levels, best first, each level as its price then its
//! size, each an `i64` in little-endian bytes. An empty book hashes zero bytes: 0.
//!
//! Run by the ingest thread after every published change, and by any client
//! (loadgen, tests) that checks the book it rebuilt. Pure: no allocation, no
//! I/O, never panics.

use crate::wire::pb;

use super::book::OrderBook;

/// Levels per side that the checksum covers.
pub const CHECKSUM_DEPTH: usize = 10;

/// Bytes hashed per level: price then size, 8 bytes each.
const LEVEL_BYTES: usize = 16;

/// The checksum of `book`.
pub fn checksum(book: &OrderBook) -> u32 {
    checksum_levels(book.bids(), book.asks())
}

/// The checksum of a book given as its levels, each side best first (bids
/// descending, asks ascending), as a snapshot carries them. Only the first
/// [`CHECKSUM_DEPTH`] levels of each side are read.
pub fn checksum_levels(
    bids: impl IntoIterator<Item = pb::Level>,
    asks: impl IntoIterator<Item = pb::Level>,
) -> u32 {
    // One contiguous buffer hashed once: faster than 40 small `update`s.
    let mut buf = [0u8; 2 * CHECKSUM_DEPTH * LEVEL_BYTES];
    let (bid_buf, ask_buf) = buf.split_at_mut(CHECKSUM_DEPTH * LEVEL_BYTES);
    let n_bids = write_levels(bid_buf, bids);
    let n_asks = write_levels(ask_buf, asks);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bid_buf[..n_bids * LEVEL_BYTES]);
    hasher.update(&ask_buf[..n_asks * LEVEL_BYTES]);
    hasher.finalize()
}

/// Writes up to `buf.len() / LEVEL_BYTES` levels; returns how many.
fn write_levels(buf: &mut [u8], levels: impl IntoIterator<Item = pb::Level>) -> usize {
    let mut n = 0;
    for (chunk, level) in buf.chunks_exact_mut(LEVEL_BYTES).zip(levels) {
        let (price, size) = chunk.split_at_mut(8);
        price.copy_from_slice(&level.price.to_le_bytes());
        size.copy_from_slice(&level.size.to_le_bytes());
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::book::Side;

    fn lv(price: i64, size: i64) -> pb::Level {
        pb::Level { price, size }
    }

    fn book(bids: &[(i64, i64)], asks: &[(i64, i64)]) -> OrderBook {
        let bids: Vec<_> = bids.iter().map(|&(p, s)| lv(p, s)).collect();
        let asks: Vec<_> = asks.iter().map(|&(p, s)| lv(p, s)).collect();
        OrderBook::from_levels(&bids, &asks).unwrap()
    }

    #[test]
    fn empty_book_is_zero() {
        // python3 -c 'import zlib; print(zlib.crc32(b""))'  → 0
        assert_eq!(checksum(&OrderBook::new()), 0);
        assert_eq!(checksum_levels([], []), 0);
    }

    #[test]
    fn one_level_each_side() {
        // python3 -c 'import zlib,struct; print(zlib.crc32(struct.pack("<qqqq", 3000050, 12500, 3000100, 5000)))'
        let b = book(&[(3000050, 12500)], &[(3000100, 5000)]);
        assert_eq!(checksum(&b), 3022377490);
        assert_eq!(b.checksum(), 3022377490);
    }

    #[test]
    fn only_the_top_ten_of_each_side_count() {
        // python3 -c '
        // import zlib,struct
        // b=[(100-i,i+1) for i in range(12)]; a=[(101+i,2*(i+1)) for i in range(12)]
        // data=b"".join(struct.pack("<qq",p,s) for p,s in b[:10]+a[:10]); print(zlib.crc32(data))'
        let bids: Vec<_> = (0..12).map(|i| (100 - i, i + 1)).collect();
        let asks: Vec<_> = (0..12).map(|i| (101 + i, 2 * (i + 1))).collect();
        let mut b = book(&bids, &asks);
        assert_eq!(checksum(&b), 2837002365);
        // Changes below the top ten do not move it; a change in it does.
        b.apply(Side::Bid, 89, 0);
        b.apply(Side::Ask, 150, 3);
        assert_eq!(checksum(&b), 2837002365);
        b.apply(Side::Ask, 110, 7);
        assert_ne!(checksum(&b), 2837002365);
    }

    #[test]
    fn negative_prices() {
        // python3 -c 'import zlib,struct; print(zlib.crc32(struct.pack("<qqqqqq", -5, 7, -10, 1, -3, 9)))'
        let b = book(&[(-5, 7), (-10, 1)], &[(-3, 9)]);
        assert_eq!(checksum(&b), 2328814548);
    }

    #[test]
    fn one_sided_books() {
        // python3 -c 'import zlib,struct; print(zlib.crc32(struct.pack("<qq", 42, 1)))'
        assert_eq!(checksum(&book(&[], &[(42, 1)])), 3281881754);
        assert_eq!(checksum(&book(&[(42, 1)], &[])), 3281881754);
        // python3 -c 'import zlib,struct; print(zlib.crc32(struct.pack("<qqqq", 9223372036854775807, 9223372036854775807, -9223372036854775808, 1)))'
        assert_eq!(
            checksum(&book(&[(i64::MAX, i64::MAX), (i64::MIN, 1)], &[])),
            2436750542
        );
    }

    #[test]
    fn levels_form_matches_the_book_form() {
        let bids: Vec<_> = (0..15).map(|i| lv(1_000 - 3 * i, 1 + i)).collect();
        let asks: Vec<_> = (0..4).map(|i| lv(1_001 + i, 10 + i)).collect();
        let b = OrderBook::from_levels(&bids, &asks).unwrap();
        assert_eq!(
            checksum_levels(bids.iter().copied(), asks.iter().copied()),
            checksum(&b)
        );
    }
}
