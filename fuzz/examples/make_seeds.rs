//! Writes the checked-in seed corpora, `fuzz/corpus/<target>/seed-*`, with
//! tickwire's own encoders: the PROTOCOL §3 examples as protobuf frames and
//! JSON lines, a real upgrade request, masked client frames (RFC 6455 §5.7),
//! the PROTOCOL §6 requests.
//!
//! ```sh
//! cd fuzz && cargo run --example make_seeds
//! ```
//!
//! Byte-stream seeds start with the header that `tickwire_fuzz::Input`
//! reads: an options byte, then the chunk lengths (`\0` = one read).

use std::fs;
use std::path::Path;

use tickwire::book::decode::{encode_json_line, encode_proto};
use tickwire::book::synth::{SynthConfig, SynthMarket};
use tickwire::wire::pb::{self, ingest_message::Body};
use tickwire::ws::close::CloseCode;
use tickwire::ws::frame::{write_client_frame, write_close_frame};
use tickwire::ws::{ClientHandshake, Opcode, Role};

const TS: u64 = 1_732_870_000_000_000_000;
/// The masking key of RFC 6455 §5.7.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One read, default options.
const WHOLE: &[u8] = &[0, 0];
/// Byte by byte.
const BYTES: &[u8] = &[0, 1, 1];
/// Reads of 3, 1 and 7 bytes.
const ODD: &[u8] = &[0, 3, 3, 1, 7];

fn with(header: &[u8], options: u8, body: &[u8]) -> Vec<u8> {
    let mut out = header.to_vec();
    out[0] = options;
    out.extend_from_slice(body);
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
}

fn msg(body: Body) -> pb::IngestMessage {
    pb::IngestMessage { body: Some(body) }
}

/// The four messages of the PROTOCOL §3 example.
fn protocol_example(token: &str) -> Vec<pb::IngestMessage> {
    vec![
        msg(Body::Hello(pb::Hello {
            feed_id: "cb-1".into(),
            token: token.into(),
        })),
        msg(Body::Snapshot(pb::BookSnapshot {
            symbol: "BTC-USD".into(),
            seq: 1,
            bids: vec![pb::Level {
                price: 3_000_050,
                size: 12_500,
            }],
            asks: vec![pb::Level {
                price: 3_000_100,
                size: 5_000,
            }],
            price_decimals: 2,
            size_decimals: 4,
            exchange_ts_ns: TS,
            ..Default::default()
        })),
        msg(Body::Delta(pb::BookDelta {
            symbol: "BTC-USD".into(),
            seq: 2,
            updates: vec![pb::LevelUpdate {
                side: pb::Side::Bid as i32,
                price: 3_000_050,
                size: 0,
            }],
            exchange_ts_ns: TS + 500_000,
            ..Default::default()
        })),
        msg(Body::Trade(pb::Trade {
            symbol: "BTC-USD".into(),
            price: 3_000_050,
            size: 100,
            aggressor: pb::Side::Bid as i32,
            trade_id: "t-1".into(),
            exchange_ts_ns: TS + 600_000,
            ..Default::default()
        })),
    ]
}

fn proto(msgs: &[pb::IngestMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_proto(m, &mut out);
    }
    out
}

fn json(msgs: &[pb::IngestMessage]) -> Vec<u8> {
    let mut out = String::new();
    for m in msgs {
        encode_json_line(m, 2, 4, &mut out);
    }
    out.into_bytes()
}

/// A short synthetic stream: snapshots of two symbols then 20 events.
fn synthetic() -> Vec<pb::IngestMessage> {
    let mut synth = SynthMarket::new(SynthConfig {
        seed: 3,
        symbols: 2,
        depth: 4,
        ..SynthConfig::default()
    });
    let mut msgs = synth.snapshots(TS);
    msgs.extend((0..20).map(|i| synth.next_event(TS + i)));
    msgs
}

fn ingest_seeds() {
    let example = protocol_example("");
    let with_token = protocol_example("s3cret");
    write(
        "ingest_proto",
        "protocol-example",
        &with(WHOLE, 0, &proto(&example)),
    );
    write(
        "ingest_proto",
        "protocol-example-bytewise",
        &with(BYTES, 0, &proto(&example)),
    );
    write("ingest_proto", "token", &with(ODD, 4, &proto(&with_token)));
    write(
        "ingest_proto",
        "small-limit",
        &with(WHOLE, 1, &proto(&example)),
    );
    write(
        "ingest_proto",
        "synthetic",
        &with(ODD, 3, &proto(&synthetic())),
    );

    // The four lines of PROTOCOL §3, verbatim (JSON seeds decode with BTC-USD at 2/4).
    let lines = concat!(
        r#"{"type":"hello","feed_id":"cb-1","token":"…"}"#,
        "\n",
        r#"{"type":"snapshot","symbol":"BTC-USD","seq":1,"price_decimals":2,"size_decimals":4,"bids":[["30000.50","1.2500"]],"asks":[["30001.00","0.5000"]],"exchange_ts_ns":1732870000000000000}"#,
        "\n",
        r#"{"type":"delta","symbol":"BTC-USD","seq":2,"bids":[["30000.50","0"]],"asks":[],"exchange_ts_ns":1732870000000500000}"#,
        "\n",
        r#"{"type":"trade","symbol":"BTC-USD","price":"30000.50","size":"0.0100","aggressor":"bid","trade_id":"t-1","exchange_ts_ns":1732870000000600000}"#,
        "\n",
    );
    write(
        "ingest_json",
        "protocol-example",
        &with(WHOLE, 0, lines.as_bytes()),
    );
    write(
        "ingest_json",
        "protocol-example-bytewise",
        &with(BYTES, 0, lines.as_bytes()),
    );
    let crlf = lines.replace('\n', "\r\n \r\n");
    write(
        "ingest_json",
        "crlf-and-blank-lines",
        &with(ODD, 0, crlf.as_bytes()),
    );
    write("ingest_json", "token", &with(ODD, 4, &json(&with_token)));
    write(
        "ingest_json",
        "small-limit",
        &with(WHOLE, 2, &json(&example)),
    );
    write(
        "ingest_json",
        "synthetic",
        &with(ODD, 3, &json(&synthetic())),
    );
}

fn upgrade(path: &str, protocols: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    ClientHandshake::new([7; 16], protocols).write_request(&mut out, "localhost:8080", path);
    out
}

fn http_seeds() {
    let ws = upgrade("/ws?encoding=json", &["tickwire.v1.proto"]);
    write("http_request", "upgrade", &with(WHOLE, 0, &ws));
    write("http_request", "upgrade-bytewise", &with(BYTES, 0, &ws));
    let mut pipelined = ws.clone();
    pipelined.extend_from_slice(&[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ]);
    write(
        "http_request",
        "upgrade-then-frame",
        &with(ODD, 0, &pipelined),
    );
    write("http_request", "upgrade-small-limit", &with(ODD, 2, &ws));
    write(
        "http_request",
        "healthz-lf",
        &with(WHOLE, 0, b"GET /healthz HTTP/1.0\nHost: a\n\n"),
    );
}

fn masked(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_frame(&mut out, fin, opcode, payload, KEY);
    out
}

const SUBSCRIBE: &str =
    r#"{"op":"subscribe","symbols":["BTC-USD","ETH-USD"],"channels":["book","trades"],"id":7}"#;
const UNSUBSCRIBE: &str =
    r#"{"op":"unsubscribe","symbols":["BTC-USD"],"channels":["book"],"id":8}"#;

fn ws_seeds() {
    // Options: bit 0 echo path, bits 1-2 message limit, bit 3 pings, bits 4-5 time
    // step, bit 7 the server closes.
    let hello = masked(Opcode::Text, true, b"Hello");
    write("ws_server", "masked-hello", &with(WHOLE, 0, &hello));

    let mut session = masked(Opcode::Text, true, SUBSCRIBE.as_bytes());
    session.extend(masked(Opcode::Ping, true, b"ping"));
    session.extend(masked(Opcode::Text, false, b"Hel"));
    session.extend(masked(Opcode::Pong, true, b""));
    session.extend(masked(Opcode::Continuation, true, b"lo"));
    session.extend(masked(Opcode::Text, true, UNSUBSCRIBE.as_bytes()));
    let mut close = Vec::new();
    write_close_frame(Role::Client, &mut close, CloseCode::NORMAL, "bye", KEY);
    session.extend(&close);
    write("ws_server", "session", &with(WHOLE, 0, &session));
    write(
        "ws_server",
        "session-odd-reads-pings",
        &with(ODD, 8 | 16, &session),
    );

    let mut echo = masked(Opcode::Binary, true, &[0, 1, 2, 255]);
    echo.extend(masked(Opcode::Text, true, "é€😀".as_bytes()));
    write("ws_server", "echo-binary-utf8", &with(BYTES, 1, &echo));

    let big = masked(Opcode::Text, true, &[b'a'; 200]);
    write("ws_server", "too-big", &with(ODD, 2 << 1, &big));
    let mut bad = masked(Opcode::Text, true, &[0xce, 0xba, 0xe1, 0xbd]);
    bad.extend(masked(Opcode::Text, true, b"after"));
    write("ws_server", "bad-utf8", &with(WHOLE, 0, &bad));
    let mut unmasked = vec![0x81, 0x05];
    unmasked.extend_from_slice(b"Hello");
    write("ws_server", "unmasked", &with(WHOLE, 0, &unmasked));
    write(
        "ws_server",
        "silence-then-timeout",
        &with(ODD, 3 << 4, &hello),
    );
}

fn client_request_seeds() {
    write("client_request", "subscribe", SUBSCRIBE.as_bytes());
    write("client_request", "unsubscribe", UNSUBSCRIBE.as_bytes());
    let session = [
        SUBSCRIBE,
        r#"{"op":"subscribe","symbols":["SOL-USD"],"id":1}"#,
        r#"{"op":"subscribe","symbols":["BTC-USD","ETH-USD","SOL-USD"],"channels":["trades"],"id":2}"#,
        "#close",
        UNSUBSCRIBE,
        r#"{"op":"subscribe","symbols":["DOGE-USD"],"id":3}"#,
        r#"{"op":"subscribe","symbols":["bad sym"],"channels":["book"],"id":4}"#,
        r#"{"op":"sub","symbols":["BTC-USD"],"id":5}"#,
        r#"{"op":"unsubscribe","symbols":["ETH-USD"],"channels":["trades","book"],"id":6}"#,
    ]
    .join("\n");
    write("client_request", "session", session.as_bytes());
    let burst = std::iter::repeat_n(SUBSCRIBE, 40)
        .collect::<Vec<_>>()
        .join("\n");
    write("client_request", "rate-limited", burst.as_bytes());
}

/// `arbitrary` reads raw bytes; a few of different lengths to start from.
fn arbitrary_seeds() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, len) in [16usize, 64, 256, 1024].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        write("diff_ingest", &format!("random-{i}"), &bytes);
        write("book_model", &format!("random-{i}"), &bytes);
    }
}

/// The backplane target splits its input at 0xff: data messages, snapshot
/// replies and heartbeats in turn, for an edge holding `BTC-USD` at seq 3
/// (bid 100×5, ask 110×7) from origin `o` in epoch 7.
fn backplane_seeds() {
    use tickwire::book::book::OrderBook;
    use tickwire::cluster::header::{self, Header, Kind, OriginTag};
    use tickwire::cluster::heartbeat::{BookState, Entry, Heartbeat};
    let h = |kind, seq| Header {
        kind,
        origin: OriginTag::of("o"),
        epoch: 7,
        seq,
    };
    let mut book = OrderBook::from_levels(
        &[pb::Level { price: 100, size: 5 }],
        &[pb::Level { price: 110, size: 7 }],
    )
    .expect("a valid book");
    book.apply(tickwire::book::book::Side::Bid, 100, 6);
    let delta = pb::ServerMessage {
        body: Some(pb::server_message::Body::Delta(pb::BookDelta {
            symbol: "BTC-USD".into(),
            seq: 4,
            updates: vec![pb::LevelUpdate {
                side: pb::Side::Bid as i32,
                price: 100,
                size: 6,
            }],
            checksum: book.checksum(),
            ..Default::default()
        })),
    };
    let delta = header::encode(&h(Kind::Delta, 4), &prost::Message::encode_to_vec(&delta));
    write("backplane", "delta-follows-on", &delta);
    let mut then_stale = delta.clone();
    then_stale.push(0xff);
    then_stale.extend(header::encode(&h(Kind::StaleGap, 4), &[]));
    write("backplane", "delta-then-stale", &then_stale);
    let beat = Heartbeat::encode(
        "o",
        7,
        &[Entry {
            symbol: "BTC-USD".into(),
            seq: 9,
            trade_seq: 0,
            price_decimals: 2,
            size_decimals: 0,
            state: BookState::Live,
        }],
    );
    let mut mixed = b"twx".to_vec();
    mixed.push(0xff);
    mixed.extend(header::encode(&h(Kind::Delta, 9), &[]));
    mixed.push(0xff);
    mixed.extend([0u8; 5]);
    mixed.push(0xff);
    mixed.extend(beat);
    write("backplane", "garbage-reply-heartbeat", &mixed);
}

fn main() {
    ingest_seeds();
    http_seeds();
    ws_seeds();
    client_request_seeds();
    arbitrary_seeds();
    backplane_seeds();
    auth_token_seeds();
    sse_open_seeds();
}

/// `GET /sse` queries (PROTOCOL §11), the second with a `Last-Event-ID`
/// after the `\n`, the third a percent-encoded browser query.
fn sse_open_seeds() {
    use tickwire::ws::sse::{ResumeToken, epoch_digest};
    write(
        "sse_open",
        "protocol-example",
        b"symbols=BTC-USD,ETH-USD&channels=book.10@1000ms,trades&encoding=json",
    );
    let token = ResumeToken {
        digest: epoch_digest([("BTC-USD", 7), ("ETH-USD", 7)]),
        positions: vec![(1234, 88), (0, 300)],
    }
    .encode();
    write(
        "sse_open",
        "resume",
        format!("symbols=BTC-USD,ETH-USD&channels=book,trades&token=a.b.c\n{token}").as_bytes(),
    );
    write(
        "sse_open",
        "url-search-params",
        b"symbols=BTC-USD%2CETH-USD&channels=book%4050ms%2Ctrades&_=1712",
    );
}

/// The secret of the `auth_token` target (its HS256 key).
const AUTH_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Claims with every entitlement of PROTOCOL §8, valid until 2100.
const AUTH_CLAIMS: &str = r#"{"sub":"alice","exp":4102444800,"nbf":1700000000,"tw":{"symbols":["BTC-*","ETH-USD","*-EUR"],"channels":["book.10@1000ms","trades"],"max_depth":10,"min_interval_ms":1000,"max_connections":2,"max_subscriptions":50,"requests_per_sec":5}}"#;

/// Tokens (a signed one, `alg: none`), claims payloads and a token file.
fn auth_token_seeds() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let header = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", b64(AUTH_CLAIMS));
    let key = jsonwebtoken::EncodingKey::from_secret(AUTH_SECRET).expect("a secret");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HS256 signs");
    write("auth_token", "hs256", format!("{message}.{sig}").as_bytes());
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(AUTH_CLAIMS));
    write("auth_token", "alg-none", none.as_bytes());
    write("auth_token", "claims", AUTH_CLAIMS.as_bytes());
    write(
        "auth_token",
        "claims-wrong-types",
        br#"{"sub":7,"exp":"soon","tw":{"symbols":"BTC","max_depth":"ten"}}"#,
    );
    write(
        "auth_token",
        "token-file",
        b"# feed token\ncoinbase-1 aaaaaaaaaaaaaaaa1\nbinance-1 bbbbbbbbbbbbbbbb2\n",
    );
}
