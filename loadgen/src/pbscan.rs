//! A zero-copy reader of `tickwire.v1.ServerMessage` for the two hot message
//! kinds, `BookDelta` and `Trade`: fields are read in place from the frame
//! payload, level updates are iterated without a `Vec`, the symbol is a byte
//! slice. Everything else (snapshots, control answers) is rare and goes to
//! prost.
//!
//! Why: a client that allocates a `String` and a `Vec` per delta spends more
//! time in the allocator than in verifying, and loadgen must be fast enough
//! not to measure itself (see `tuning/CAPACITY.md` for the figures).
//!
//! Pure functions over byte slices, run by every client thread. Never panics on
//! peer bytes: malformed input is a [`ScanError`]. Follows the protobuf
//! encoding rules (unknown fields skipped, fields in any order, for a
//! repeated oneof the last one wins, a missing scalar is its default).

use thiserror::Error;
use tickwire::wire::varint::{VarintError, read_varint};

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ScanError {
    #[error("truncated varint or field")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("unsupported wire type {0}")]
    WireType(u8),
    #[error("empty ServerMessage")]
    Empty,
}

/// A `BookDelta`, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaView<'a> {
    pub symbol: &'a [u8],
    pub seq: u64,
    pub exchange_ts_ns: u64,
    pub checksum: u32,
    /// The part of the `BookDelta` from its first `updates` field to the end
    /// of its last, for [`DeltaView::updates`].
    updates: &'a [u8],
}

/// A `Trade`, read in place (only what verification and latency need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeView<'a> {
    pub symbol: &'a [u8],
    pub seq: u64,
    pub exchange_ts_ns: u64,
}

/// What a `ServerMessage` payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned<'a> {
    Delta(DeltaView<'a>),
    Trade(TradeView<'a>),
    /// Any other body: its oneof field number (1 snapshot, 4 subscribed,
    /// 5 unsubscribed, 6 error, 7 stale, or unknown) and the whole payload,
    /// for prost.
    Other(u32),
}

impl From<VarintError> for ScanError {
    fn from(e: VarintError) -> ScanError {
        match e {
            VarintError::Truncated => ScanError::Truncated,
            VarintError::TooLong => ScanError::VarintTooLong,
        }
    }
}

/// Reads one varint at `*pos`: the engine's [`read_varint`] (word at a time,
/// see its NB), with this module's error.
#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ScanError> {
    Ok(read_varint(buf, pos)?)
}

/// Skips one varint without decoding it.
#[inline(always)]
fn skip_varint(buf: &[u8], pos: &mut usize) -> Result<(), ScanError> {
    // NB: one 8-byte load finds the end of most varints (a timestamp is 9
    // bytes: one more step); see `read_varint`.
    let rest = &buf[*pos..];
    if let Some(w) = rest.first_chunk::<8>() {
        let ends = !u64::from_le_bytes(*w) & 0x8080_8080_8080_8080;
        if ends != 0 {
            *pos += (ends.trailing_zeros() / 8) as usize + 1;
            return Ok(());
        }
    }
    varint(buf, pos).map(|_| ())
}

/// Skips a length-delimited field's value.
#[inline(always)]
fn skip_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8], ScanError> {
    let len = varint(buf, pos)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| pos.checked_add(l))
        .filter(|&e| e <= buf.len())
        .ok_or(ScanError::Truncated)?;
    let bytes = &buf[*pos..end];
    *pos = end;
    Ok(bytes)
}

/// One field: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

#[inline(always)]
fn field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<(u32, Field<'a>), ScanError> {
    let key = varint(buf, pos)?;
    let number = (key >> 3) as u32;
    let value = match (key & 7) as u8 {
        0 => Field::Varint(varint(buf, pos)?),
        2 => Field::Bytes(skip_bytes(buf, pos)?),
        w @ (1 | 5) => {
            *pos += if w == 1 { 8 } else { 4 };
            if *pos > buf.len() {
                return Err(ScanError::Truncated);
            }
            Field::Fixed
        }
        w => return Err(ScanError::WireType(w)),
    };
    Ok((number, value))
}

/// Reads a `ServerMessage` payload.
pub fn scan(payload: &[u8]) -> Result<Scanned<'_>, ScanError> {
    let mut pos = 0;
    let mut body: Option<(u32, &[u8])> = None;
    // The usual frame: one field, a delta (key 0x12).
    if payload.first() == Some(&0x12) {
        pos = 1;
        body = Some((2, skip_bytes(payload, &mut pos)?));
    }
    while pos < payload.len() {
        if let (n @ 1..=7, Field::Bytes(b)) = field(payload, &mut pos)? {
            body = Some((n, b));
        }
    }
    match body {
        None => Err(ScanError::Empty),
        Some((2, b)) => scan_delta(b).map(Scanned::Delta),
        Some((3, b)) => scan_trade(b).map(Scanned::Trade),
        Some((n, _)) => Ok(Scanned::Other(n)),
    }
}

fn scan_delta(body: &[u8]) -> Result<DeltaView<'_>, ScanError> {
    let mut d = DeltaView {
        symbol: &[],
        seq: 0,
        exchange_ts_ns: 0,
        checksum: 0,
        updates: &[],
    };
    // NB: the fields in the order prost writes them (by number), each test
    // a predictable branch; anything else continues in the general loop.
    // `examples/verify_cost.rs` showed a jump table on the key byte costing a
    // tenth of the client thread.
    let mut pos = 0;
    let at = |pos: usize, key: u8| body.get(pos) == Some(&key);
    if at(pos, 0x0a) {
        pos += 1;
        d.symbol = skip_bytes(body, &mut pos)?;
    }
    if at(pos, 0x10) {
        pos += 1;
        d.seq = varint(body, &mut pos)?;
    }
    let (mut first, mut last) = (usize::MAX, 0);
    if at(pos, 0x1a) {
        first = pos;
        while at(pos, 0x1a) {
            pos += 1;
            skip_bytes(body, &mut pos)?;
        }
        last = pos;
    }
    if at(pos, 0x20) {
        pos += 1;
        d.exchange_ts_ns = varint(body, &mut pos)?;
    }
    if at(pos, 0x28) {
        pos += 1;
        skip_varint(body, &mut pos)?;
    }
    if at(pos, 0x30) {
        pos += 1;
        // uint32: a longer varint is truncated, as protobuf says.
        d.checksum = varint(body, &mut pos)? as u32;
    }
    while pos < body.len() {
        let start = pos;
        match field(body, &mut pos)? {
            (1, Field::Bytes(b)) => d.symbol = b,
            (2, Field::Varint(v)) => d.seq = v,
            (3, Field::Bytes(_)) => {
                first = first.min(start);
                last = pos;
            }
            (4, Field::Varint(v)) => d.exchange_ts_ns = v,
            (6, Field::Varint(v)) => d.checksum = v as u32,
            _ => {}
        }
    }
    if first < last {
        d.updates = &body[first..last];
    }
    Ok(d)
}

fn scan_trade(body: &[u8]) -> Result<TradeView<'_>, ScanError> {
    let mut t = TradeView {
        symbol: &[],
        seq: 0,
        exchange_ts_ns: 0,
    };
    let mut pos = 0;
    while pos < body.len() {
        match field(body, &mut pos)? {
            (1, Field::Bytes(b)) => t.symbol = b,
            (2, Field::Varint(v)) => t.seq = v,
            (6, Field::Varint(v)) => t.exchange_ts_ns = v,
            _ => {}
        }
    }
    Ok(t)
}

/// One level update: (side as the protobuf enum value, price, size).
pub type RawUpdate = (i32, i64, i64);

impl<'a> DeltaView<'a> {
    /// The level updates in order.
    pub fn updates(&self) -> Updates<'a> {
        Updates {
            body: self.updates,
            pos: 0,
        }
    }
}

/// Iterator over a delta's `LevelUpdate`s; yields an error (and then stops)
/// on malformed bytes.
pub struct Updates<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Iterator for Updates<'_> {
    type Item = Result<RawUpdate, ScanError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.body.len() {
            let r = if self.body[self.pos] == 0x1a {
                self.pos += 1;
                skip_bytes(self.body, &mut self.pos).map(Some)
            } else {
                field(self.body, &mut self.pos).map(|f| match f {
                    (3, Field::Bytes(u)) => Some(u),
                    _ => None,
                })
            };
            match r {
                Ok(None) => {}
                Ok(Some(u)) => {
                    let r = level_update(u);
                    if r.is_err() {
                        self.pos = self.body.len();
                    }
                    return Some(r);
                }
                Err(e) => {
                    self.pos = self.body.len();
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[inline(always)]
fn level_update(u: &[u8]) -> Result<RawUpdate, ScanError> {
    let (mut side, mut price, mut size) = (0i32, 0i64, 0i64);
    let mut pos = 0;
    while let Some(&key) = u.get(pos) {
        match key {
            0x08 => {
                pos += 1;
                side = varint(u, &mut pos)? as i32;
            }
            0x10 => {
                pos += 1;
                price = varint(u, &mut pos)? as i64;
            }
            0x18 => {
                pos += 1;
                size = varint(u, &mut pos)? as i64;
            }
            _ => match field(u, &mut pos)? {
                // enum and int64: two's complement in a 64-bit varint.
                (1, Field::Varint(v)) => side = v as i32,
                (2, Field::Varint(v)) => price = v as i64,
                (3, Field::Varint(v)) => size = v as i64,
                _ => {}
            },
        }
    }
    Ok((side, price, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tickwire::wire::pb::{self, server_message::Body};

    fn encode(body: Body) -> Vec<u8> {
        pb::ServerMessage { body: Some(body) }.encode_to_vec()
    }

    fn delta() -> pb::BookDelta {
        pb::BookDelta {
            symbol: "BTC-USD".into(),
            seq: 300,
            updates: vec![
                pb::LevelUpdate {
                    side: pb::Side::Bid as i32,
                    price: -5,
                    size: 0,
                },
                pb::LevelUpdate {
                    side: pb::Side::Ask as i32,
                    price: i64::MAX,
                    size: 12,
                },
            ],
            exchange_ts_ns: 1_732_870_000_000_000_000,
            ingest_ts_ns: 7,
            checksum: u32::MAX,
            channel: String::new(),
            prev_seq: 0,
        }
    }

    #[test]
    fn delta_fields_and_updates_match_prost() {
        let bytes = encode(Body::Delta(delta()));
        let Ok(Scanned::Delta(d)) = scan(&bytes) else {
            panic!("a delta");
        };
        assert_eq!(d.symbol, b"BTC-USD");
        assert_eq!((d.seq, d.checksum), (300, u32::MAX));
        assert_eq!(d.exchange_ts_ns, 1_732_870_000_000_000_000);
        let ups: Vec<_> = d.updates().collect::<Result<_, _>>().unwrap();
        assert_eq!(ups, vec![(1, -5, 0), (2, i64::MAX, 12)]);
    }

    #[test]
    fn defaults_when_fields_are_absent() {
        let bytes = encode(Body::Delta(pb::BookDelta::default()));
        let Ok(Scanned::Delta(d)) = scan(&bytes) else {
            panic!("a delta");
        };
        assert_eq!((d.symbol, d.seq, d.checksum), (&b""[..], 0, 0));
        assert_eq!(d.updates().count(), 0);
    }

    #[test]
    fn trade_and_other_bodies() {
        let t = pb::Trade {
            symbol: "ETH-USD".into(),
            seq: 9,
            price: 1,
            size: 2,
            aggressor: 1,
            exchange_ts_ns: 44,
            ingest_ts_ns: 45,
            trade_id: "x".into(),
        };
        assert_eq!(
            scan(&encode(Body::Trade(t))),
            Ok(Scanned::Trade(TradeView {
                symbol: b"ETH-USD",
                seq: 9,
                exchange_ts_ns: 44
            }))
        );
        let stale = encode(Body::Stale(pb::Stale {
            symbol: "A".into(),
            dropped: 1,
            reason: "feed_gap".into(),
        }));
        assert_eq!(scan(&stale), Ok(Scanned::Other(7)));
        assert_eq!(scan(&[]), Err(ScanError::Empty));
    }

    #[test]
    fn unknown_fields_are_skipped_and_truncation_is_an_error() {
        let mut bytes = encode(Body::Delta(delta()));
        // An unknown fixed64 field 15 and fixed32 field 14 around the body.
        let mut with = vec![0x79, 1, 2, 3, 4, 5, 6, 7, 8];
        with.extend_from_slice(&bytes);
        with.extend_from_slice(&[0x75, 1, 2, 3, 4]);
        assert!(matches!(scan(&with), Ok(Scanned::Delta(_))));
        bytes.pop();
        assert_eq!(scan(&bytes), Err(ScanError::Truncated));
        assert_eq!(scan(&[0x0b]), Err(ScanError::WireType(3)));
        assert_eq!(scan(&[0x80; 11]), Err(ScanError::VarintTooLong));
    }

    #[test]
    fn varints_of_every_length_match_prost_and_truncation_is_caught() {
        let mut values = vec![0u64, 1, 127, 128, 300, u64::MAX, (-5i64) as u64];
        for bits in 0..64 {
            values.push(1u64 << bits);
            values.push((1u64 << bits) - 1);
            values.push((1u64 << bits) | 0x55);
        }
        for v in values {
            let mut enc = Vec::new();
            prost::encoding::encode_varint(v, &mut enc);
            for pad in [0usize, 1, 9] {
                let mut buf = enc.clone();
                buf.extend(std::iter::repeat_n(0xffu8, pad));
                let mut pos = 0;
                assert_eq!(varint(&buf, &mut pos), Ok(v), "{v} pad {pad}");
                assert_eq!(pos, enc.len());
                let mut pos = 0;
                skip_varint(&buf, &mut pos).unwrap();
                assert_eq!(pos, enc.len(), "skip {v}");
            }
            let mut pos = 0;
            assert_eq!(
                varint(&enc[..enc.len() - 1], &mut pos),
                Err(ScanError::Truncated)
            );
        }
        let mut pos = 0;
        assert_eq!(varint(&[0xff; 12], &mut pos), Err(ScanError::VarintTooLong));
    }

    #[test]
    fn every_prefix_and_random_bytes_never_panic() {
        let bytes = encode(Body::Delta(delta()));
        for end in 0..bytes.len() {
            if let Ok(Scanned::Delta(d)) = scan(&bytes[..end]) {
                for u in d.updates() {
                    let _ = u;
                }
            }
        }
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let v: Vec<u8> = (0..(x % 40) as usize)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Ok(Scanned::Delta(d)) = scan(&v) {
                let _ = d.updates().count();
            }
        }
    }
}
