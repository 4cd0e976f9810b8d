//! Incremental UTF-8 validation for text messages that arrive in pieces
//! (fragments, and partial reads of one frame).
//!
//! RFC 6455 §8.1: an endpoint that receives invalid UTF-8 in a text message
//! MUST fail the connection. Autobahn section 6 also checks that it is
//! noticed *as early as possible*: [`Utf8Validator::feed`] rejects a chunk as
//! soon as a byte makes the text invalid whatever follows, not only at the end
//! of the message. A code point split across chunks is carried over in at
//! most 3 bytes of state.
//!
//! Pure state, owned by one connection on its worker thread. Never allocates.

/// Error: the bytes fed so far can never become valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates a byte stream chunk by chunk.
///
/// # Invariants
///
/// `partial[..partial_len]` is a strict prefix of a valid UTF-8 encoding of
/// one code point (so `partial_len` is 0 to 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// Length of the sequence that starts with the lead byte `b` (assumed valid).
fn sequence_len(b: u8) -> usize {
    match b {
        0xF0..=0xF4 => 4,
        0xE0..=0xEF => 3,
        _ => 2,
    }
}

impl Utf8Validator {
    pub fn new() -> Utf8Validator {
        Utf8Validator::default()
    }

    /// Validates the next chunk. Fails as soon as the stream is invalid
    /// whatever bytes come next; a code point cut at the end of `bytes` is
    /// kept until the next call.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.partial_len > 0 {
            let have = self.partial_len as usize;
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(bytes.len());
            self.partial[have..have + take].copy_from_slice(&bytes[..take]);
            self.partial_len += take as u8;
            bytes = &bytes[take..];
            match std::str::from_utf8(&self.partial[..self.partial_len as usize]) {
                Ok(_) => self.partial_len = 0,
                // Some(_): an invalid byte; the sequence can never complete.
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                // Still a valid prefix: `bytes` ran out before the code point did.
                Err(_) => {
                    debug_assert!(bytes.is_empty());
                    return Ok(());
                }
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                // error_len() == None: the input ended inside a sequence whose
                // bytes so far are valid. Keep them (1 to 3 bytes).
                let tail = &bytes[e.valid_up_to()..];
                debug_assert!((1..=3).contains(&tail.len()));
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// True when no code point is cut: the message may end here.
    pub fn is_complete(&self) -> bool {
        self.partial_len == 0
    }

    /// Forgets any carried-over bytes (start of a new message).
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_all(chunks: &[&[u8]]) -> Result<bool, (usize, InvalidUtf8)> {
        let mut v = Utf8Validator::new();
        for (i, c) in chunks.iter().enumerate() {
            v.feed(c).map_err(|e| (i, e))?;
        }
        Ok(v.is_complete())
    }

    #[test]
    fn code_points_split_across_chunks_are_accepted() {
        // "κόσμε" (Autobahn 6.2.x), split at every byte.
        let text = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes();
        for split in 0..=text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(feed_all(&[a, b]), Ok(true), "split at {split}");
        }
        let one_by_one: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(feed_all(&one_by_one), Ok(true));
        // A 4-byte code point, then ASCII.
        let emoji = "\u{1F600}x".as_bytes();
        let bytes: Vec<&[u8]> = emoji.chunks(1).collect();
        assert_eq!(feed_all(&bytes), Ok(true));
    }

    #[test]
    fn incomplete_code_point_at_the_end_is_not_complete() {
        assert_eq!(feed_all(&[b"ab\xce"]), Ok(false));
        assert_eq!(feed_all(&[b"\xf0\x9f", b"\x98"]), Ok(false));
    }

    #[test]
    fn invalid_bytes_fail_fast_at_the_first_impossible_byte() {
        // Autobahn 6.4.1: "κόσμε" then 0xF4 0x90 (above U+10FFFF): invalid at 0x90.
        let good = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes();
        assert_eq!(
            feed_all(&[good, b"\xf4", b"\x90", b"\x80\x80"]),
            Err((2, InvalidUtf8))
        );
        // Overlong encoding, surrogate, stray continuation, invalid lead bytes.
        assert_eq!(feed_all(&[b"\xc0"]), Err((0, InvalidUtf8)));
        assert_eq!(feed_all(&[b"\xe0", b"\x80"]), Err((1, InvalidUtf8)));
        assert_eq!(feed_all(&[b"\xed", b"\xa0"]), Err((1, InvalidUtf8)));
        assert_eq!(feed_all(&[b"a\x80"]), Err((0, InvalidUtf8)));
        assert_eq!(feed_all(&[b"\xff"]), Err((0, InvalidUtf8)));
        assert_eq!(feed_all(&[b"\xf5"]), Err((0, InvalidUtf8)));
        // A cut sequence followed by something that is not a continuation.
        assert_eq!(feed_all(&[b"\xce", b"a"]), Err((1, InvalidUtf8)));
    }

    proptest! {
        #[test]
        fn chunked_validation_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                              cuts in proptest::collection::vec(0usize..64, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut v = Utf8Validator::new();
            let mut start = 0;
            let mut ok = true;
            for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
                if v.feed(&bytes[start..c]).is_err() {
                    ok = false;
                    break;
                }
                start = c;
            }
            let ok = ok && v.is_complete();
            prop_assert_eq!(ok, std::str::from_utf8(&bytes).is_ok());
        }

        #[test]
        fn valid_strings_pass_at_any_chunking(s in "\\PC*", cut in 0usize..200) {
            let bytes = s.as_bytes();
            let cut = cut.min(bytes.len());
            prop_assert_eq!(feed_all(&[&bytes[..cut], &bytes[cut..]]), Ok(true));
        }
    }
}
