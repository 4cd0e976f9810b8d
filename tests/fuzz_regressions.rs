//! Inputs the fuzz targets (fuzz/, README "Fuzzing") found, minimized, each
//! fed through the same API as the target that found it, with the answer
//! the engine must give. One test per finding, named after the target.

use tickwire::ws::HttpError;
use tickwire::ws::http::{RequestParser, parse_request};

/// Pushes `reads` one after the other until the parser answers.
fn push_reads(max_head_bytes: usize, reads: &[&[u8]]) -> Result<bool, HttpError> {
    let mut parser = RequestParser::new(max_head_bytes);
    for read in reads {
        if parser.push(read)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// http_request: `"\0  \n"` was `Malformed("method")` in one read but
/// `Malformed("request line")` when the NUL came alone: a request line
/// holding a byte no request line may hold is now the same 400 either way.
#[test]
fn http_request_bad_byte_is_the_same_error_whatever_the_split() {
    let whole = parse_request(b"\0  \n", 1024);
    assert_eq!(whole, Err(HttpError::Malformed("request line")));
    assert_eq!(
        push_reads(1024, &[b"\0", b"  \n"]),
        Err(HttpError::Malformed("request line"))
    );
}

/// http_request: a request line longer than the head limit was 431 when a
/// read ended before its newline, but 400 when its (bad) end came in the
/// same read: only the bytes within the limit are judged now, so it is 431.
#[test]
fn http_request_overlong_request_line_is_431_whatever_the_split() {
    let line = b"GET /aaaaaaaaaaaa HTTP/1.2\r\n\r\n";
    assert_eq!(parse_request(line, 16), Err(HttpError::HeadTooLarge(16)));
    assert_eq!(
        push_reads(16, &[&line[..20], &line[20..]]),
        Err(HttpError::HeadTooLarge(16))
    );
}
