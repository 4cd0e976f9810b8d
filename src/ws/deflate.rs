//! permessage-deflate (RFC 7692, PROTOCOL §12): negotiating the extension
//! in the opening handshake, compressing an outgoing message, inflating an
//! incoming one with a bounded output.
//!
//! tickwire always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed on its own, so
//! the compressed bytes of a message are the same for every connection that
//! negotiated the extension (encode once) and no connection holds a sliding
//! window between messages.
//!
//! Pure functions over byte slices, run by whichever thread owns the
//! connection or builds the frame. Never touches sockets or the clock, and
//! never panics on peer bytes: a malformed offer is declined (the 101 goes
//! out without the extension), corrupt or oversized compressed data is an
//! error value.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension token (RFC 7692 §7).
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// Messages shorter than this go uncompressed (RSV1 clear), bytes. PROTOCOL §12 default.
pub const DEFAULT_THRESHOLD_BYTES: u32 = 256;

/// RFC 7692 §7.2.1: the four octets a sync flush ends with, removed by the
/// sender and appended again by the receiver.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compressor's window: miniz_oxide always uses 32 KiB (2^15).
const OWN_WINDOW_BITS: u8 = 15;

/// The agreed parameters of an accepted offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// `server_max_window_bits` the client asked for (RFC 7692 §7.1.2.1),
    /// echoed in the response. Our compressor's window is 32 KiB: a message
    /// no longer than the peer's window cannot refer further back than it,
    /// and a longer one is sent as stored deflate blocks (no references).
    pub server_max_window_bits: Option<u8>,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub fn response_value(&self) -> String {
        let mut v =
            format!("{EXTENSION_NAME}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            v.push_str(&format!("; server_max_window_bits={bits}"));
        }
        v
    }

    /// Whether a message of `len` bytes may go out compressed with our
    /// 32 KiB window under the window the client allowed.
    pub fn fits_window(&self, len: usize) -> bool {
        match self.server_max_window_bits {
            Some(bits) if bits < OWN_WINDOW_BITS => len <= 1 << bits,
            _ => true,
        }
    }
}

/// The first acceptable `permessage-deflate` offer among `offers` (the
/// comma-separated elements of every `Sec-WebSocket-Extensions` header),
/// or `None`: answer without the extension. Other extensions are skipped;
/// an offer with an unknown or repeated parameter or a bad value is
/// declined (RFC 7692 §5: the server MUST decline such an offer).
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<Deflate> {
    offers.into_iter().find_map(parse_offer)
}

/// One extension offer: `permessage-deflate; param[=value]; …`.
fn parse_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION_NAME) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_max_window_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let idx = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[idx], true) {
            return None;
        }
        match (idx, value) {
            // §7.1.1: the context-takeover parameters have no value.
            (0 | 1, None) => {}
            // §7.1.2.1: server_max_window_bits needs a value in 8..=15.
            (2, Some(v)) => server_max_window_bits = Some(window_bits(v)?),
            // §7.1.2.2: client_max_window_bits may have no value. We inflate
            // with a 32 KiB window, which reads any smaller one.
            (3, None) => {}
            (3, Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    Some(Deflate {
        server_max_window_bits,
    })
}

/// A parameter value: a token or a quoted string (RFC 7692 §5.1 via RFC
/// 6455 §9.1); `None` for an unterminated quote.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// §7.1.2: `1*DIGIT` with no leading zero, in 8..=15.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Compresses messages one at a time (no context takeover). Holds the
/// compressor's tables (a few hundred KiB), so keep one per thread, not one
/// per connection.
pub struct Compressor {
    inner: Compress,
    /// Level 0: stored blocks only, for messages longer than the peer's window.
    stored: Compress,
}

impl Default for Compressor {
    fn default() -> Compressor {
        Compressor::new()
    }
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor {
            // Raw deflate (no zlib header): RFC 7692 §7.2.1.
            inner: Compress::new(Compression::fast(), false),
            stored: Compress::new(Compression::none(), false),
        }
    }

    /// [`Compressor::compress`] within the window `d` allows: a message longer
    /// than it goes as stored blocks (RSV1 still set, nothing referenced).
    pub fn compress_for(&mut self, d: Deflate, payload: &[u8], out: &mut Vec<u8>) {
        if d.fits_window(payload.len()) {
            compress_with(&mut self.inner, payload, out);
        } else {
            compress_with(&mut self.stored, payload, out);
        }
    }

    /// Appends the compressed form of `payload` to `out` (RFC 7692 §7.2.1:
    /// deflate, sync flush, the trailing `00 00 ff ff` removed).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        compress_with(&mut self.inner, payload, out);
    }
}

fn compress_with(c: &mut Compress, payload: &[u8], out: &mut Vec<u8>) {
    c.reset();
    let start = out.len();
    let mut input = payload;
    loop {
        out.reserve(input.len() / 2 + 64);
        let before = c.total_in();
        let status = c.compress_vec(input, out, FlushCompress::Sync);
        let used = (c.total_in() - before) as usize;
        input = &input[used..];
        // A sync flush is complete once the input is used and the output
        // did not fill the space given.
        let done = input.is_empty() && out.len() < out.capacity();
        match status {
            Ok(Status::Ok | Status::BufError) if !done => {}
            _ => break,
        }
    }
    debug_assert!(
        out[start..].ends_with(&TAIL),
        "a sync flush ends with 00 00 ff ff"
    );
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the limit (a decompression bomb): close 1009.
    #[error("message inflates past {max} bytes")]
    TooBig { max: usize },
    /// Not a valid deflate stream.
    #[error("invalid compressed data")]
    Corrupt,
}

/// Appends the inflated form of the compressed message `payload` to `out`,
/// never producing more than `max` bytes (the output grows only as data
/// comes out, so a bomb costs at most `max` bytes and is stopped there).
///
/// Allocates the inflater's state (about 40 KiB) per call: client messages
/// are rare (requests), so no connection keeps one while idle.
pub fn inflate(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
    let mut d = Decompress::new(false);
    let start = out.len();
    let mut buf = [0u8; 8192];
    // RFC 7692 §7.2.2: append 00 00 ff ff, then inflate.
    for mut input in [payload, &TAIL[..]] {
        loop {
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d
                .decompress(input, &mut buf, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (d.total_in() - in0) as usize;
            let made = (d.total_out() - out0) as usize;
            input = &input[used..];
            if out.len() - start + made > max {
                return Err(InflateError::TooBig { max });
            }
            out.extend_from_slice(&buf[..made]);
            if status == Status::StreamEnd {
                // A final block (BFINAL) ends the message: the rest is ignored.
                return Ok(());
            }
            if made < buf.len() && (input.is_empty() || (used == 0 && made == 0)) {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<Deflate> {
        negotiate(v.split(',').map(str::trim))
    }

    #[test]
    fn plain_offer_is_accepted_with_both_no_context_takeovers() {
        let d = offer("permessage-deflate").unwrap();
        assert_eq!(d.server_max_window_bits, None);
        assert_eq!(
            d.response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // Browsers' offer.
        assert!(offer("permessage-deflate; client_max_window_bits").is_some());
    }

    #[test]
    fn every_known_parameter_with_valid_values_is_accepted() {
        let d = offer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=\"15\"",
        )
        .unwrap();
        assert_eq!(d.server_max_window_bits, Some(10));
        assert!(d.response_value().ends_with("; server_max_window_bits=10"));
        assert!(d.fits_window(1024) && !d.fits_window(1025));
        assert!(
            Deflate {
                server_max_window_bits: Some(15)
            }
            .fits_window(1 << 20)
        );
        // Past the window: stored blocks, which any window inflates.
        let payload: Vec<u8> = (0..3000).map(|i| (i % 7) as u8).collect();
        let mut z = Vec::new();
        Compressor::new().compress_for(d, &payload, &mut z);
        assert!(z.len() > payload.len());
        let mut back = Vec::new();
        inflate(&z, 1 << 20, &mut back).unwrap();
        assert_eq!(back, payload);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_acceptable_one_wins() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=\"9",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; ",
            "x-webkit-deflate-frame",
            "",
            ";;;==",
        ] {
            assert_eq!(offer(bad), None, "{bad:?}");
        }
        let d = offer(
            "x-foo, permessage-deflate; server_max_window_bits=99, \
             permessage-deflate; server_max_window_bits=12, permessage-deflate",
        );
        assert_eq!(d.unwrap().server_max_window_bits, Some(12));
    }

    fn round_trip(payload: &[u8]) -> Vec<u8> {
        let mut z = Vec::new();
        Compressor::new().compress(payload, &mut z);
        assert!(!z.ends_with(&TAIL));
        let mut back = Vec::new();
        inflate(&z, payload.len(), &mut back).unwrap();
        back
    }

    #[test]
    fn compress_then_inflate_round_trips() {
        for len in [0, 1, 100, 255, 256, 5000, 64 * 1024] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ (i / 7) as u8).collect();
            assert_eq!(round_trip(&payload), payload, "len {len}");
        }
        // One compressor, many messages: each independent of the one before.
        let mut c = Compressor::new();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.compress(b"hello hello hello hello", &mut a);
        c.compress(b"hello hello hello hello", &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn rfc_7692_7_2_3_1_hello() {
        // "Hello" compressed without context takeover.
        let mut out = Vec::new();
        inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out).unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.6: a final block ends the message.
        out.clear();
        inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut z = Vec::new();
        Compressor::new().compress(&vec![0u8; 1 << 20], &mut z);
        assert!(
            z.len() < 8192,
            "1 MiB of zeros compresses to {} bytes",
            z.len()
        );
        let mut out = Vec::new();
        assert_eq!(
            inflate(&z, 64 * 1024, &mut out),
            Err(InflateError::TooBig { max: 64 * 1024 })
        );
        assert!(out.len() <= 64 * 1024);
        // Exactly the limit is fine.
        z.clear();
        Compressor::new().compress(&vec![0u8; 64 * 1024], &mut z);
        out.clear();
        assert_eq!(inflate(&z, 64 * 1024, &mut out), Ok(()));
        assert_eq!(out.len(), 64 * 1024);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut out = Vec::new();
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], 1024, &mut out),
            Err(InflateError::Corrupt)
        );
    }
}
