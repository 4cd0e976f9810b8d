//! The client→server half of the WebSocket codec (`tickwire::ws`), the part a
//! worker runs on every request a client sends:
//!
//! - `decode_60b_text/conn`: one 60-byte masked text frame through an open
//!   server [`Conn`] (`handle_read` + `poll_event`: header, unmask, UTF-8,
//!   the message `String`), and `decode_60b_text/header` for the header alone.
//! - `unmask_64k/word` vs `unmask_64k/bytewise`: unmasking a 64 KiB payload
//!   (the largest client message) eight bytes at a time vs one at a time; the
//!   ratio justifies the `NB:` on `ws::frame::apply_mask`.
//!
//! Run: `cargo bench --bench ws_codec`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire::ws::frame::{
    Role, apply_mask, apply_mask_bytewise, decode_header, write_client_frame,
};
use tickwire::ws::{ClientHandshake, Config, Conn, Event, Opcode, Route, Router};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An open server connection, through the real handshake.
fn open_conn(now: Instant) -> Conn {
    let mut conn = Conn::server(now, Config::default());
    let mut req = Vec::new();
    ClientHandshake::new([7; 16], &[]).write_request(&mut req, "bench", "/ws");
    conn.handle_read(now, &req);
    let Some(Event::Request(request)) = conn.poll_event(now) else {
        panic!("no request");
    };
    let Route::Upgrade(up) = Router::new().route(&request) else {
        panic!("no upgrade");
    };
    conn.accept(&up);
    conn.poll_transmit(&mut Vec::new());
    conn
}

fn decode_small_text(c: &mut Criterion) {
    let text = r#"{"op":"subscribe","symbols":["BTC-USD"],"id":12345678}"#;
    let mut frame = Vec::new();
    write_client_frame(&mut frame, true, Opcode::Text, text.as_bytes(), KEY);
    assert_eq!(frame.len(), 60);

    let now = Instant::now();
    let mut conn = open_conn(now);
    let mut group = c.benchmark_group("decode_60b_text");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("conn", |b| {
        b.iter(|| {
            conn.handle_read(now, black_box(&frame));
            match conn.poll_event(now) {
                Some(Event::Text(t)) => black_box(t),
                other => panic!("unexpected {other:?}"),
            }
        })
    });
    group.bench_function("header", |b| {
        b.iter(|| decode_header(Role::Server, black_box(&frame)))
    });
    group.finish();
}

fn unmask_64k(c: &mut Criterion) {
    let mut buf: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
    let mut group = c.benchmark_group("unmask_64k");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("word", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0))
    });
    group.bench_function("bytewise", |b| {
        b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), 0))
    });
    group.finish();
}

criterion_group!(benches, decode_small_text, unmask_64k);
criterion_main!(benches);
