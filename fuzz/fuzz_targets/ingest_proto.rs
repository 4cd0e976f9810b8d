//! `FeedDecoder` with protobuf framing on arbitrary reads; see
//! `tickwire_fuzz::ingest::check` for the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::book::decode::Framing;

fuzz_target!(|data: &[u8]| tickwire_fuzz::ingest::check(Framing::Protobuf, data));
