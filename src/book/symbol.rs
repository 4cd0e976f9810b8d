//! Symbol names (PROTOCOL §1): 1 to 32 bytes of `[A-Za-z0-9._:/-]`.
//!
//! Owns nothing; a pure check. Run by the ingest thread (decoding feed
//! messages) and by workers (client subscribe requests). Must never allocate or
//! panic: it sees raw peer input.

/// The longest symbol, in bytes.
pub const MAX_SYMBOL_BYTES: usize = 32;

/// `true` when `s` is 1 to [`MAX_SYMBOL_BYTES`] bytes, each one of
/// `A-Z a-z 0-9 . _ : / -`. Anything else (empty, too long, spaces, other
/// punctuation, any non-ASCII byte) is invalid.
pub fn is_valid_symbol(s: &str) -> bool {
    (1..=MAX_SYMBOL_BYTES).contains(&s.len()) && s.bytes().all(is_symbol_byte)
}

fn is_symbol_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert!(!is_valid_symbol(""));
        assert!(is_valid_symbol("A"));
        assert!(is_valid_symbol(&"X".repeat(32)));
        assert!(!is_valid_symbol(&"X".repeat(33)));
    }

    #[test]
    fn every_allowed_class() {
        for s in [
            "ABCXYZ",
            "abcxyz",
            "0123456789",
            ".",
            "_",
            ":",
            "/",
            "-",
            "BTC-USD",
            "ETH/USD:PERP",
            "es_z4.cme",
        ] {
            assert!(is_valid_symbol(s), "{s:?}");
        }
        // Every allowed byte, alone.
        for b in 0u8..=127 {
            let s = char::from(b).to_string();
            let allowed = b.is_ascii_alphanumeric() || b"._:/-".contains(&b);
            assert_eq!(is_valid_symbol(&s), allowed, "byte {b:#x}");
        }
    }

    #[test]
    fn forbidden_bytes() {
        for s in [
            "BTC USD",
            "BTC#USD",
            "BTC-USDé",
            "€",
            "BTC\nUSD",
            "BTC\0",
            "a,b",
            "a\"b",
            "a\\b",
            "*",
            " ",
        ] {
            assert!(!is_valid_symbol(s), "{s:?}");
        }
        // Non-ASCII that fits in 32 bytes is still refused.
        assert!(!is_valid_symbol("ü"));
    }
}
