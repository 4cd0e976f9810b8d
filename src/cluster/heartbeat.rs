//! An origin's heartbeat: once a second, on `tw.hb.<origin>`, the symbols it
//! owns with their last book and trade seq, so that an edge detects silence
//! (the origin or the backplane is gone) and the loss of a last message (its
//! book is behind the heartbeat's seq), and learns every symbol the cluster
//! offers before any of its clients holds one.
//!
//! ```text
//! "twhb" version(1) origin_len(u8) origin epoch(u64 LE) count(u16 LE)
//! count × { symbol_len(u8) symbol seq(u64 LE) trade_seq(u64 LE)
//!           price_decimals(u8) size_decimals(u8) state(u8: 0 live, 1 feed_gap, 2 feed_down) }
//! ```
//!
//! An origin with more than [`MAX_ENTRIES`] symbols sends several messages
//! per beat; each stands alone. Pure code.

use thiserror::Error;

use crate::book::symbol::is_valid_symbol;
use crate::wire::decimal::MAX_DECIMALS;

use super::subject::is_valid_origin;

pub const MAGIC: [u8; 4] = *b"twhb";
pub const VERSION: u8 = 1;
/// Symbols per heartbeat message (about 60 KiB at most).
pub const MAX_ENTRIES: usize = 1000;

/// How an origin's book stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookState {
    Live,
    FeedGap,
    FeedDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub symbol: String,
    pub seq: u64,
    pub trade_seq: u64,
    pub price_decimals: u32,
    pub size_decimals: u32,
    pub state: BookState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub origin: String,
    pub epoch: u64,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeartbeatError {
    #[error("truncated heartbeat")]
    Truncated,
    #[error("not a heartbeat (bad magic)")]
    BadMagic,
    #[error("unknown heartbeat version {0}")]
    UnknownVersion(u8),
    #[error("invalid origin name")]
    BadOrigin,
    #[error("more than {MAX_ENTRIES} entries ({0})")]
    TooManyEntries(usize),
    #[error("invalid symbol in entry {0}")]
    BadSymbol(usize),
    #[error("invalid decimals or state in entry {0}")]
    BadEntry(usize),
    #[error("{0} bytes after the last entry")]
    TrailingBytes(usize),
}

impl Heartbeat {
    /// Encodes one message; `entries` must hold at most [`MAX_ENTRIES`]
    /// (callers split with `chunks(MAX_ENTRIES)`).
    pub fn encode(origin: &str, epoch: u64, entries: &[Entry]) -> Vec<u8> {
        debug_assert!(entries.len() <= MAX_ENTRIES);
        let mut out = Vec::with_capacity(16 + origin.len() + entries.len() * 56);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(origin.len() as u8);
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for e in entries {
            out.push(e.symbol.len() as u8);
            out.extend_from_slice(e.symbol.as_bytes());
            out.extend_from_slice(&e.seq.to_le_bytes());
            out.extend_from_slice(&e.trade_seq.to_le_bytes());
            out.push(e.price_decimals as u8);
            out.push(e.size_decimals as u8);
            out.push(match e.state {
                BookState::Live => 0,
                BookState::FeedGap => 1,
                BookState::FeedDown => 2,
            });
        }
        out
    }

    /// Decodes one message; anything malformed is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(HeartbeatError::BadMagic);
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(HeartbeatError::UnknownVersion(v));
        }
        let n = r.u8()? as usize;
        let origin = std::str::from_utf8(r.take(n)?)
            .ok()
            .filter(|o| is_valid_origin(o))
            .ok_or(HeartbeatError::BadOrigin)?
            .to_string();
        let epoch = r.u64()?;
        let count = u16::from_le_bytes(r.array()?) as usize;
        if count > MAX_ENTRIES {
            return Err(HeartbeatError::TooManyEntries(count));
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let n = r.u8()? as usize;
            let symbol = std::str::from_utf8(r.take(n)?)
                .ok()
                .filter(|s| is_valid_symbol(s))
                .ok_or(HeartbeatError::BadSymbol(i))?
                .to_string();
            let seq = r.u64()?;
            let trade_seq = r.u64()?;
            let price_decimals = u32::from(r.u8()?);
            let size_decimals = u32::from(r.u8()?);
            let state = match r.u8()? {
                0 => BookState::Live,
                1 => BookState::FeedGap,
                2 => BookState::FeedDown,
                _ => return Err(HeartbeatError::BadEntry(i)),
            };
            if price_decimals > MAX_DECIMALS || size_decimals > MAX_DECIMALS {
                return Err(HeartbeatError::BadEntry(i));
            }
            entries.push(Entry {
                symbol,
                seq,
                trade_seq,
                price_decimals,
                size_decimals,
                state,
            });
        }
        if !r.0.is_empty() {
            return Err(HeartbeatError::TrailingBytes(r.0.len()));
        }
        Ok(Heartbeat {
            origin,
            epoch,
            entries,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeartbeatError> {
        if self.0.len() < n {
            return Err(HeartbeatError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HeartbeatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, HeartbeatError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, HeartbeatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(symbol: &str, seq: u64, state: BookState) -> Entry {
        Entry {
            symbol: symbol.into(),
            seq,
            trade_seq: seq / 2,
            price_decimals: 2,
            size_decimals: 18,
            state,
        }
    }

    #[test]
    fn round_trip() {
        let entries = vec![
            entry("BTC-USD", 42, BookState::Live),
            entry("ETH.USD", u64::MAX, BookState::FeedGap),
            entry("X", 1, BookState::FeedDown),
        ];
        let bytes = Heartbeat::encode("venue-a", 99, &entries);
        let hb = Heartbeat::decode(&bytes).unwrap();
        assert_eq!(hb.origin, "venue-a");
        assert_eq!(hb.epoch, 99);
        assert_eq!(hb.entries, entries);
        let empty = Heartbeat::decode(&Heartbeat::encode("o", 1, &[])).unwrap();
        assert!(empty.entries.is_empty());
    }

    #[test]
    fn every_truncation_and_bad_field_is_an_error() {
        let bytes = Heartbeat::encode("venue-a", 99, &[entry("BTC-USD", 42, BookState::Live)]);
        for n in 0..bytes.len() {
            assert!(Heartbeat::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            Heartbeat::decode(&extra),
            Err(HeartbeatError::TrailingBytes(1))
        );
        let mut bad = bytes.clone();
        bad[4] = 9;
        assert_eq!(
            Heartbeat::decode(&bad),
            Err(HeartbeatError::UnknownVersion(9))
        );
        // The symbol's first byte (after magic, version, len, origin, epoch, count, len).
        let sym_at = 4 + 1 + 1 + 7 + 8 + 2 + 1;
        let mut bad = bytes.clone();
        bad[sym_at] = b' ';
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::BadSymbol(0)));
        let state_at = bytes.len() - 1;
        let mut bad = bytes.clone();
        bad[state_at] = 3;
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::BadEntry(0)));
        let mut bad = bytes;
        bad[state_at - 1] = 19;
        assert_eq!(Heartbeat::decode(&bad), Err(HeartbeatError::BadEntry(0)));
    }
}
