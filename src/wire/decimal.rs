//! Exact fixed-point decimal strings (PROTOCOL §1): parsing the strings a JSON
//! feed sends into `i64` mantissas, and formatting mantissas back into strings.
//!
//! Owns nothing; pure functions. Run by the ingest thread (JSON ingest decoding,
//! JSON rendering of server messages) and by tests, load generators and the demo
//! feed. It must never round, never go through a float, never allocate while
//! parsing, and never panic on peer input.
//!
//! # Grammar accepted on input
//!
//! ```text
//! decimal = [ "-" ] digits [ "." digits ]      ; "-" for prices only
//! digits  = 1*( "0" / "1" / … / "9" )
//! ```
//!
//! - At least one digit on each side of a `.`: `"1."` and `".5"` are rejected,
//!   as are `"."`, `""`, `"-"`, exponents (`"1e5"`), `"+1"`, spaces anywhere,
//!   and any other byte.
//! - Leading zeros are accepted (`"007.50"` is 7.50): they cannot change a value.
//! - Fractional digits beyond `decimals` are accepted only if they are all zeros
//!   (`"1.2500"` at 2 decimals is 125); `"100.001"` at 2 decimals is an error,
//!   never rounded.
//! - `"-0"` and `"-0.00"` are 0.
//! - A value outside `i64` after scaling is an error, never wrapped or saturated.
//! - `decimals` must be in `0..=18` ([`MAX_DECIMALS`]): 10^18 is the largest power
//!   of ten an `i64` holds.

use thiserror::Error;

/// The largest number of decimals a symbol may have (PROTOCOL §1).
pub const MAX_DECIMALS: u32 = 18;

/// Why a decimal string was refused. Carries no copy of the input (parsing never
/// allocates); callers that log add the offending string themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecimalError {
    #[error("empty decimal string")]
    Empty,
    #[error("a size cannot be negative")]
    Negative,
    #[error(
        "malformed decimal string (expected an optional '-', digits, optionally '.' and digits; no exponent, '+' or spaces)"
    )]
    Malformed,
    #[error("more fractional digits than the symbol's {decimals} decimals, and they are not zeros")]
    TooPrecise { decimals: u32 },
    #[error("decimal value out of the int64 range")]
    Overflow,
    #[error("decimals out of range 0..={max}: {0}", max = MAX_DECIMALS)]
    BadDecimals(u32),
}

/// `decimals` as a protobuf `int32` carries them, clamped into
/// `0..=`[`MAX_DECIMALS`] (for rendering: out-of-range values were refused
/// at ingest).
pub fn clamp_decimals(d: i32) -> u32 {
    d.clamp(0, MAX_DECIMALS as i32) as u32
}

/// Parses a price: an optional `-`, digits, optionally `.` and digits, scaled by
/// `10^decimals` exactly. See the module doc for the grammar.
pub fn parse_price(s: &str, decimals: u32) -> Result<i64, DecimalError> {
    parse(s.as_bytes(), decimals, true)
}

/// Parses a size: like [`parse_price`] but a leading `-` is refused (even `"-0"`).
/// Whether a size may be 0 is the caller's rule (0 removes a level in an update).
pub fn parse_size(s: &str, decimals: u32) -> Result<i64, DecimalError> {
    parse(s.as_bytes(), decimals, false)
}

fn parse(bytes: &[u8], decimals: u32, allow_negative: bool) -> Result<i64, DecimalError> {
    if decimals > MAX_DECIMALS {
        return Err(DecimalError::BadDecimals(decimals));
    }
    if bytes.is_empty() {
        return Err(DecimalError::Empty);
    }
    let (negative, rest) = match bytes.split_first() {
        Some((b'-', rest)) if allow_negative => (true, rest),
        Some((b'-', _)) => return Err(DecimalError::Negative),
        _ => (false, bytes),
    };
    // The magnitude, accumulated in u64 so that i64::MIN's magnitude (2^63) fits.
    let mut magnitude: u64 = 0;

    let mut i = 0;
    let mut int_digits = 0usize;
    while let Some(&b) = rest.get(i) {
        if !b.is_ascii_digit() {
            break;
        }
        magnitude = push_digit(magnitude, b)?;
        int_digits += 1;
        i += 1;
    }
    if int_digits == 0 {
        return Err(DecimalError::Malformed);
    }

    let mut scaled_digits = 0u32; // fractional digits folded into `magnitude`
    match rest.get(i) {
        None => {}
        Some(b'.') => {
            i += 1;
            let mut frac_digits = 0usize;
            while let Some(&b) = rest.get(i) {
                if !b.is_ascii_digit() {
                    return Err(DecimalError::Malformed);
                }
                if scaled_digits < decimals {
                    magnitude = push_digit(magnitude, b)?;
                    scaled_digits += 1;
                } else if b != b'0' {
                    return Err(DecimalError::TooPrecise { decimals });
                }
                frac_digits += 1;
                i += 1;
            }
            if frac_digits == 0 {
                return Err(DecimalError::Malformed);
            }
        }
        Some(_) => return Err(DecimalError::Malformed),
    }
    // Fewer fractional digits than decimals: scale up the rest of the way.
    for _ in scaled_digits..decimals {
        magnitude = magnitude.checked_mul(10).ok_or(DecimalError::Overflow)?;
    }

    if negative {
        // -(2^63) is i64::MIN; anything larger in magnitude overflows.
        0i64.checked_sub_unsigned(magnitude)
            .ok_or(DecimalError::Overflow)
    } else {
        i64::try_from(magnitude).map_err(|_| DecimalError::Overflow)
    }
}

/// `magnitude * 10 + digit`, or `Overflow`. `b` is an ASCII digit.
fn push_digit(magnitude: u64, b: u8) -> Result<u64, DecimalError> {
    magnitude
        .checked_mul(10)
        .and_then(|m| m.checked_add(u64::from(b - b'0')))
        .ok_or(DecimalError::Overflow)
}

/// Appends `mantissa × 10^-decimals` to `out` with exactly `decimals` fractional
/// digits (PROTOCOL §1): `3000050` at 2 is `"30000.50"`, `30000` at 0 is `"30000"`,
/// `-5` at 2 is `"-0.05"`. Every `i64` is exact, `i64::MIN` included.
///
/// `decimals` should be at most [`MAX_DECIMALS`]; larger values are still
/// formatted exactly (with more leading zeros), never truncated.
pub fn format_decimal(mantissa: i64, decimals: u32, out: &mut String) {
    debug_assert!(
        decimals <= MAX_DECIMALS,
        "decimals {decimals} > {MAX_DECIMALS}"
    );
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut n = 0;
    let mut m = mantissa.unsigned_abs();
    loop {
        // n < 20: a u64 has at most 20 decimal digits, so the loop ends before.
        digits[19 - n] = b'0' + (m % 10) as u8;
        n += 1;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    let digits = &digits[20 - n..];
    let d = decimals as usize;
    out.reserve(n + d + 3);
    if mantissa < 0 {
        out.push('-');
    }
    if d == 0 {
        push_ascii(out, digits);
    } else if n > d {
        push_ascii(out, &digits[..n - d]);
        out.push('.');
        push_ascii(out, &digits[n - d..]);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', d - n));
        push_ascii(out, digits);
    }
}

fn push_ascii(out: &mut String, ascii: &[u8]) {
    out.extend(ascii.iter().map(|&b| char::from(b)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fmt(m: i64, d: u32) -> String {
        let mut s = String::new();
        format_decimal(m, d, &mut s);
        s
    }

    #[test]
    fn parses_protocol_examples() {
        assert_eq!(parse_price("30000.50", 2), Ok(3_000_050));
        assert_eq!(parse_size("1.2500", 4), Ok(12_500));
        assert_eq!(parse_size("1.2500", 2), Ok(125));
        assert_eq!(
            parse_price("100.001", 2),
            Err(DecimalError::TooPrecise { decimals: 2 })
        );
        assert_eq!(parse_price("30000", 0), Ok(30_000));
        assert_eq!(parse_size("0", 4), Ok(0));
    }

    #[test]
    fn negative_prices_and_negative_zero() {
        assert_eq!(parse_price("-1.5", 2), Ok(-150));
        assert_eq!(parse_price("-0.01", 2), Ok(-1));
        assert_eq!(parse_price("-0", 0), Ok(0));
        assert_eq!(parse_price("-0.00", 2), Ok(0));
        assert_eq!(parse_price("-0.000", 2), Ok(0));
    }

    #[test]
    fn sizes_refuse_a_sign() {
        assert_eq!(parse_size("-1", 0), Err(DecimalError::Negative));
        assert_eq!(parse_size("-0", 0), Err(DecimalError::Negative));
        assert_eq!(parse_size("+1", 0), Err(DecimalError::Malformed));
    }

    #[test]
    fn zero_and_eighteen_decimals() {
        assert_eq!(parse_price("42", 0), Ok(42));
        assert_eq!(parse_price("42.0", 0), Ok(42));
        assert_eq!(
            parse_price("42.5", 0),
            Err(DecimalError::TooPrecise { decimals: 0 })
        );
        assert_eq!(parse_price("0.000000000000000001", 18), Ok(1));
        assert_eq!(parse_price("1", 18), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_price("0.0000000000000000010", 18), Ok(1));
        assert_eq!(
            parse_price("0.0000000000000000001", 18),
            Err(DecimalError::TooPrecise { decimals: 18 })
        );
        assert_eq!(parse_price("1", 19), Err(DecimalError::BadDecimals(19)));
    }

    #[test]
    fn malformed_strings() {
        for s in [
            "1e5", "1E5", "1.5e2", "+1", " 1", "1 ", "1 .5", "1. 5", ".", "1.", ".5", "-", "-.5",
            "--1", "1..2", "1.2.3", "0x10", "1,5", "١", "½", "NaN", "inf", "1_000", "\u{0}",
        ] {
            assert_eq!(parse_price(s, 2), Err(DecimalError::Malformed), "{s:?}");
        }
        assert_eq!(parse_price("", 2), Err(DecimalError::Empty));
        assert_eq!(parse_size("", 2), Err(DecimalError::Empty));
        // A bad byte after excess zeros is still malformed, not "too precise".
        assert_eq!(parse_price("1.000x", 1), Err(DecimalError::Malformed));
    }

    #[test]
    fn leading_zeros_are_accepted() {
        assert_eq!(parse_price("007.50", 2), Ok(750));
        assert_eq!(parse_price("00000000000000000000000000001", 0), Ok(1));
    }

    #[test]
    fn overflow_boundaries_at_0_decimals() {
        assert_eq!(parse_price("9223372036854775807", 0), Ok(i64::MAX));
        assert_eq!(
            parse_price("9223372036854775808", 0),
            Err(DecimalError::Overflow)
        );
        assert_eq!(parse_price("-9223372036854775808", 0), Ok(i64::MIN));
        assert_eq!(
            parse_price("-9223372036854775809", 0),
            Err(DecimalError::Overflow)
        );
        assert_eq!(parse_size("9223372036854775807", 0), Ok(i64::MAX));
        assert_eq!(
            parse_size("9223372036854775808", 0),
            Err(DecimalError::Overflow)
        );
        // Beyond u64 while accumulating.
        assert_eq!(
            parse_price("99999999999999999999999", 0),
            Err(DecimalError::Overflow)
        );
        assert_eq!(
            parse_price("-99999999999999999999999", 0),
            Err(DecimalError::Overflow)
        );
    }

    #[test]
    fn overflow_boundaries_at_18_decimals() {
        assert_eq!(parse_price("9.223372036854775807", 18), Ok(i64::MAX));
        assert_eq!(
            parse_price("9.223372036854775808", 18),
            Err(DecimalError::Overflow)
        );
        assert_eq!(parse_price("-9.223372036854775808", 18), Ok(i64::MIN));
        assert_eq!(
            parse_price("-9.223372036854775809", 18),
            Err(DecimalError::Overflow)
        );
        // Overflow from scaling, not from digits.
        assert_eq!(parse_price("10", 18), Err(DecimalError::Overflow));
        assert_eq!(parse_price("9.3", 18), Err(DecimalError::Overflow));
        assert_eq!(parse_price("-9.3", 18), Err(DecimalError::Overflow));
        assert_eq!(parse_price("9", 18), Ok(9_000_000_000_000_000_000));
    }

    #[test]
    fn formats_exactly() {
        assert_eq!(fmt(3_000_050, 2), "30000.50");
        assert_eq!(fmt(30_000, 0), "30000");
        assert_eq!(fmt(12_500, 4), "1.2500");
        assert_eq!(fmt(0, 0), "0");
        assert_eq!(fmt(0, 2), "0.00");
        assert_eq!(fmt(-5, 2), "-0.05");
        assert_eq!(fmt(-150, 2), "-1.50");
        assert_eq!(fmt(1, 18), "0.000000000000000001");
        assert_eq!(fmt(i64::MAX, 0), "9223372036854775807");
        assert_eq!(fmt(i64::MIN, 0), "-9223372036854775808");
        assert_eq!(fmt(i64::MIN, 18), "-9.223372036854775808");
        assert_eq!(fmt(i64::MAX, 18), "9.223372036854775807");
        assert_eq!(fmt(100, 2), "1.00");
        assert_eq!(fmt(99, 2), "0.99");
    }

    #[test]
    fn format_appends() {
        let mut s = String::from("[");
        format_decimal(125, 2, &mut s);
        s.push(',');
        format_decimal(-1, 0, &mut s);
        assert_eq!(s, "[1.25,-1");
    }

    #[test]
    fn errors_have_clear_messages() {
        assert_eq!(
            DecimalError::TooPrecise { decimals: 2 }.to_string(),
            "more fractional digits than the symbol's 2 decimals, and they are not zeros"
        );
        assert!(DecimalError::Malformed.to_string().contains("no exponent"));
    }

    proptest! {
        #[test]
        fn price_round_trips(m in any::<i64>(), d in 0u32..=18) {
            let s = fmt(m, d);
            prop_assert_eq!(parse_price(&s, d), Ok(m));
        }

        #[test]
        fn size_round_trips(m in 0i64..=i64::MAX, d in 0u32..=18) {
            let s = fmt(m, d);
            prop_assert_eq!(parse_size(&s, d), Ok(m));
        }

        #[test]
        fn trailing_zeros_do_not_change_the_value(m in any::<i64>(), d in 0u32..=18, extra in 1usize..8) {
            let mut s = fmt(m, d);
            if d == 0 { s.push('.'); }
            s.extend(std::iter::repeat_n('0', extra));
            prop_assert_eq!(parse_price(&s, d), Ok(m));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}", d in 0u32..=20) {
            let _ = parse_price(&s, d);
            let _ = parse_size(&s, d);
        }

        #[test]
        fn accepted_strings_format_back_canonically(int in "[0-9]{1,6}", frac in "[0-9]{0,4}", d in 0u32..=6) {
            let s = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            if let Ok(m) = parse_price(&s, d) {
                // Reparsing the canonical form gives the same mantissa.
                prop_assert_eq!(parse_price(&fmt(m, d), d), Ok(m));
            } else {
                // Only refusal possible here: nonzero digits beyond `d`.
                prop_assert!(frac.len() > d as usize);
            }
        }
    }
}
