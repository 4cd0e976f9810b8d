//! A guard on JSON nesting depth, run before any JSON parser sees peer input.
//!
//! `sonic-rs` (like most DOM parsers) recurses once per `[` or `{`, so one
//! client message of 60,000 `[` overflows a worker's stack and aborts the whole
//! process. Every parse of peer JSON (client requests, JSON ingest lines) first
//! asks [`nesting_exceeds`]; no message of the protocol nests deeper than a few
//! levels, so the limits are small constants at the call sites.
//!
//! Pure, linear in the input, allocation-free; run on workers and the ingest
//! thread. It does not validate JSON: it only tracks strings (so brackets
//! inside a string do not count) and bracket depth; the parser that follows
//! rejects everything else.

/// True when `bytes`, read as JSON, opens more than `max_depth` arrays or
/// objects inside one another at some point. Unbalanced or invalid input is
/// not this function's concern: it answers for the deepest point it reaches.
pub fn nesting_exceeds(bytes: &[u8], max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_brackets_outside_strings_only() {
        assert!(!nesting_exceeds(b"", 0));
        assert!(!nesting_exceeds(b"1", 0));
        assert!(nesting_exceeds(b"[]", 0));
        assert!(!nesting_exceeds(b"[]", 1));
        assert!(!nesting_exceeds(br#"{"a":[1,[2]],"b":{}}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[1,[2]],"b":{}}"#, 2));
        // Siblings do not add up.
        assert!(!nesting_exceeds(b"[[],[],[],[]]", 2));
        // Brackets inside strings, escaped quotes included, do not count.
        assert!(!nesting_exceeds(br#"{"a":"[[[[{{{{"}"#, 1));
        assert!(!nesting_exceeds(br#"{"a":"\"[[[[","b":1}"#, 1));
        assert!(nesting_exceeds(br#"{"a":"\\",[[[[]]]]}"#, 2));
        // Unbalanced closers never make depth negative.
        assert!(nesting_exceeds(b"]]]]][[", 1));
    }

    #[test]
    fn the_crash_input_is_caught_in_linear_time() {
        let deep = vec![b'['; 500_000];
        assert!(nesting_exceeds(&deep, 32));
    }

    /// The guard agrees with a JSON parser: input the parser accepts with
    /// depth ≤ d is never reported as deeper. (Kept shallow: in a debug
    /// build, sonic-rs already overflows a 2 MiB test thread near depth 64.)
    fn nested(depth: usize) -> String {
        let mut s = String::new();
        for i in 0..depth {
            s.push_str(if i % 2 == 0 { "[" } else { "{\"k\":" });
        }
        s.push_str("\"]}\"");
        for i in (0..depth).rev() {
            s.push(if i % 2 == 0 { ']' } else { '}' });
        }
        s
    }

    proptest! {
        #[test]
        fn exact_at_the_boundary(depth in 0usize..16) {
            let s = nested(depth);
            prop_assert!(sonic_rs::from_str::<sonic_rs::Value>(&s).is_ok());
            prop_assert!(!nesting_exceeds(s.as_bytes(), depth));
            if depth > 0 {
                prop_assert!(nesting_exceeds(s.as_bytes(), depth - 1));
            }
        }
    }
}
