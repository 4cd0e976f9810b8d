//! Feed names: the `feed_id` of a Hello (PROTOCOL §3), which only names the
//! feed in logs. Its length is capped, and what the logs show is an escaped
//! copy that cannot break a log line.
//!
//! Owns nothing; pure functions run by the ingest thread on peer input. Must
//! never panic. A feed name is never a metric label (labels are fixed at
//! compile time, [`crate::metrics::LabeledCounter`]).

/// The longest `feed_id`, in bytes. A Hello with a longer one closes the feed
/// connection (`feed_id_too_long`): a name this long is a bug or an attack,
/// and refusing it beats logging a truncation of it on every line.
pub const MAX_FEED_ID_BYTES: usize = 64;

/// `feed_id` as the logs show it: bytes of `A-Z a-z 0-9 . _ : / @ + -` as
/// they are, every other character (space, quotes, backslash, control
/// characters such as `\n` or ESC, anything non-ASCII) as `\u{…}` with its
/// hex code point. The result is printable ASCII with no space, quote or
/// newline, so it can sit in a `key=value` log field as is; distinct names
/// stay distinct. At most 10 bytes per input character.
pub fn display_feed_id(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '+' | '-') {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_unchanged() {
        for s in ["cb-1", "binance/spot@eu+2", "a.b_c:d", ""] {
            assert_eq!(display_feed_id(s), s);
        }
    }

    #[test]
    fn log_breaking_characters_are_escaped() {
        assert_eq!(
            display_feed_id("a\nb\"c\\d e\u{1b}[31mred\r\t\0é"),
            "a\\u{a}b\\u{22}c\\u{5c}d\\u{20}e\\u{1b}\\u{5b}31mred\\u{d}\\u{9}\\u{0}\\u{e9}"
        );
        // Whatever the input, the output is printable ASCII without space,
        // quotes or `=`.
        let all: String = (0u32..0x300).filter_map(char::from_u32).collect();
        let shown = display_feed_id(&all);
        assert!(
            shown
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"'= ".contains(&b)),
            "{shown}"
        );
    }

    #[test]
    fn escaping_keeps_distinct_names_distinct() {
        // The escape's own characters (`\`, `{`, `}`) are escaped too.
        assert_ne!(display_feed_id("\n"), display_feed_id("\\u{a}"));
        assert_eq!(display_feed_id("\\u{a}"), "\\u{5c}u\\u{7b}a\\u{7d}");
    }
}
