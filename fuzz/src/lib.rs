//! Helpers shared by the fuzz targets in `fuzz_targets/`: how an input is cut
//! into a target's options and the chunks a socket would have delivered.
//!
//! Every byte-stream target reads its input the same way, so that one seed
//! format serves them all:
//!
//! ```text
//! [options] [n] [len_1 … len_n] [stream …]
//! ```
//!
//! `options` is the target's own byte (limits, roles); `n % 8` chunk lengths
//! follow, and the stream is cut into chunks of those lengths, cycling through
//! them (a length of 0 hands over an empty read). `n == 0` delivers the stream
//! in one read. Seeds are written by `examples/make_seeds.rs`.
#![forbid(unsafe_code)]

pub mod ingest;

/// Largest number of chunk lengths in an input's header.
const MAX_LENGTHS: usize = 7;

/// An input cut into its options byte and the reads of its stream.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub options: u8,
    /// The whole stream, as it would be read in one go.
    pub stream: &'a [u8],
    /// The same bytes, as the reads the header describes (concatenated, they
    /// are `stream`).
    pub chunks: Vec<&'a [u8]>,
}

impl<'a> Input<'a> {
    /// Cuts `data`; `None` when it is too short to hold a header.
    pub fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        let (&options, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n) % (MAX_LENGTHS + 1);
        if rest.len() < n {
            return None;
        }
        let (lengths, stream) = rest.split_at(n);
        Some(Input {
            options,
            stream,
            chunks: cut(stream, lengths),
        })
    }
}

/// `stream` cut into reads of `lengths`, cycling; a cycle of zeros ends
/// with the rest in one read.
pub fn cut<'a>(stream: &'a [u8], lengths: &[u8]) -> Vec<&'a [u8]> {
    if lengths.is_empty() {
        return vec![stream];
    }
    let mut chunks = Vec::new();
    let mut rest = stream;
    for &len in lengths.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let len = usize::from(len).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
        if chunks.len() % lengths.len() == 0
            && chunks[chunks.len() - lengths.len()..]
                .iter()
                .all(|c| c.is_empty())
        {
            chunks.push(rest);
            break;
        }
    }
    chunks
}

/// The symbol decimals the ingest targets pretend the market knows:
/// `(price_decimals, size_decimals)` by the symbol's first byte, `None` (no
/// snapshot yet) for symbols starting with a digit.
pub fn decimals(symbol: &str) -> Option<(u32, u32)> {
    match symbol.as_bytes().first()? {
        b'0'..=b'9' => None,
        b'A'..=b'M' => Some((2, 4)),
        b'N'..=b'Z' => Some((0, 0)),
        b'a'..=b'm' => Some((18, 18)),
        _ => Some((8, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_cycles_lengths_and_keeps_every_byte() {
        assert_eq!(cut(b"abcdef", &[]), vec![&b"abcdef"[..]]);
        assert_eq!(cut(b"abcdef", &[1, 2]), vec![&b"a"[..], b"bc", b"d", b"ef"]);
        assert_eq!(cut(b"abc", &[0, 0]), vec![&b""[..], b"", b"abc"]);
        assert_eq!(cut(b"abc", &[0, 9]), vec![&b""[..], b"abc"]);
        assert_eq!(cut(b"", &[3]), Vec::<&[u8]>::new());
    }

    #[test]
    fn parse_reads_the_header() {
        let i = Input::parse(b"\x07\x02\x01\x02abcd").unwrap();
        assert_eq!(i.options, 7);
        assert_eq!(i.stream, b"abcd");
        assert_eq!(i.chunks, vec![&b"a"[..], b"bc", b"d"]);
        assert!(Input::parse(b"\x00").is_none());
        assert!(Input::parse(b"\x00\x03\x01").is_none());
    }
}
