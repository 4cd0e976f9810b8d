// Pure parts: CRC-32 and the §5 checksum (vectors shared with the engine's
// src/book/checksum.rs), decimals (§1), both decoders, Book checks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  Book, bookChecksum, crc32, decodeJson, decodeProto, formatDecimal, parseDecimal, channelDepth,
} from "../dist/index.js";
import { ServerMessageSchema, Side } from "../dist/gen/tickwire_pb.js";

const L = (price, size) => ({ price: BigInt(price), size: BigInt(size) });

test("crc32 check value", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assert.equal(crc32(new Uint8Array()), 0);
});

test("book checksum: the engine's vectors", () => {
  assert.equal(bookChecksum([], []), 0);
  assert.equal(bookChecksum([L(3000050, 12500)], [L(3000100, 5000)]), 3022377490);
  const bids = Array.from({ length: 12 }, (_, i) => L(100 - i, i + 1));
  const asks = Array.from({ length: 12 }, (_, i) => L(101 + i, 2 * (i + 1)));
  assert.equal(bookChecksum(bids, asks), 2837002365);
  assert.equal(bookChecksum([L(-5, 7), L(-10, 1)], [L(-3, 9)]), 2328814548);
  assert.equal(bookChecksum([], [L(42, 1)]), 3281881754);
  assert.equal(bookChecksum([L(42, 1)], []), 3281881754);
  assert.equal(bookChecksum([{ price: (1n << 63n) - 1n, size: (1n << 63n) - 1n }, { price: -(1n << 63n), size: 1n }], []), 2436750542);
});

test("decimals", () => {
  assert.equal(parseDecimal("30000.5", 2), 3000050n);
  assert.equal(parseDecimal("1.2500", 2), 125n);
  assert.equal(parseDecimal("-1.5", 2), -150n);
  assert.equal(parseDecimal("7", 0), 7n);
  for (const bad of ["100.001", "1e5", "+1", " 1", "1.", ".5", "", "--1", "0x10"]) {
    assert.throws(() => parseDecimal(bad, 2), undefined, bad);
  }
  assert.throws(() => parseDecimal("-1", 2, false));
  assert.throws(() => parseDecimal("92233720368547758.08", 2)); // over int64
  assert.equal(formatDecimal(3000050n, 2), "30000.50");
  assert.equal(formatDecimal(30000n, 0), "30000");
  assert.equal(formatDecimal(-5n, 3), "-0.005");
  assert.equal(formatDecimal(0n, 4), "0.0000");
  assert.equal(channelDepth("book.10@100ms"), 10);
  assert.equal(channelDepth("book"), undefined);
});

test("JSON decoding keeps 64-bit integers exact", () => {
  const m = decodeJson(
    '{"type":"snapshot","symbol":"BTC-USD","seq":9007199254740993,"bids":[["30000.50","1.2500"]],"asks":[["30001.00","0.5000"]],"price_decimals":2,"size_decimals":4,"exchange_ts_ns":1732870000000000001,"ingest_ts_ns":2,"checksum":7,"epoch":18446744073709551615}',
    () => undefined,
  );
  assert.equal(m.seq, 9007199254740993n);
  assert.equal(m.exchangeTsNs, 1732870000000000001n);
  assert.equal(m.epoch, 18446744073709551615n);
  assert.deepEqual(m.bids, [L(3000050, 12500)]);
  assert.equal(m.channel, "book");
  const d = decodeJson(
    '{"type":"delta","symbol":"X","channel":"book.10","seq":5,"prev_seq":3,"bids":[["1.00","0"]],"asks":[],"exchange_ts_ns":1,"ingest_ts_ns":2,"checksum":0}',
    () => ({ priceDecimals: 2, sizeDecimals: 0 }),
  );
  assert.equal(d.prevSeq, 3n);
  assert.equal(d.channel, "book.10");
  assert.throws(() => decodeJson('{"type":"delta","symbol":"X","seq":1,"bids":[],"asks":[],"checksum":0}', () => undefined), /decimals are unknown/);
  assert.throws(() => decodeJson("[1]", () => undefined));
  assert.throws(() => decodeJson("{", () => undefined));
  assert.throws(() => decodeJson('{"type":"bogus"}', () => undefined));
  assert.throws(() => decodeJson('{"type":"snapshot","symbol":"X","seq":1,"bids":[["1","-1"]],"asks":[],"price_decimals":0,"size_decimals":0,"checksum":0}', () => undefined));
});

test("protobuf decoding", () => {
  const bytes = toBinary(ServerMessageSchema, create(ServerMessageSchema, {
    body: { case: "delta", value: { symbol: "X", seq: 2n, prevSeq: 1n, checksum: 5, updates: [
      { side: Side.BID, price: 10n, size: 0n }, { side: Side.ASK, price: 11n, size: 3n },
    ] } },
  }));
  const d = decodeProto(bytes);
  assert.equal(d.type, "delta");
  assert.equal(d.channel, "book");
  assert.deepEqual(d.bids, [L(10, 0)]);
  assert.deepEqual(d.asks, [L(11, 3)]);
  assert.throws(() => decodeProto(new Uint8Array([0xff, 0xff, 0xff])));
  assert.throws(() => decodeProto(new Uint8Array())); // empty oneof
});

function snap(bids, asks, seq = 1n, extra = {}) {
  return { type: "snapshot", symbol: "X", channel: "book", seq, epoch: 1n, bids, asks, priceDecimals: 2,
    sizeDecimals: 0, checksum: bookChecksum(bids, asks), exchangeTsNs: 0n, ingestTsNs: 0n, ...extra };
}
function delta(seq, bids, asks, checksum, extra = {}) {
  return { type: "delta", symbol: "X", channel: "book", seq, prevSeq: seq - 1n, bids, asks, checksum,
    exchangeTsNs: 0n, ingestTsNs: 0n, ...extra };
}

test("Book applies and verifies; the view is stable between changes", () => {
  const b = new Book("X");
  assert.equal(b.applySnapshot(snap([L(100, 1), L(99, 2)], [L(101, 3)])), undefined);
  const v1 = b.getSnapshot();
  assert.equal(b.getSnapshot(), v1);
  assert.ok(Object.isFrozen(v1) && Object.isFrozen(v1.bids));
  const after = [L(100, 5), L(98, 1)];
  assert.equal(b.applyDelta(delta(2n, [L(99, 0), L(100, 5), L(98, 1)], [], bookChecksum(after, [L(101, 3)]))), undefined);
  const v2 = b.getSnapshot();
  assert.notEqual(v2, v1);
  assert.deepEqual(v2.bids, after);
  assert.equal(v2.seq, 2n);
  assert.equal(v2.status, "live");
  assert.deepEqual(v1.bids, [L(100, 1), L(99, 2)]); // the old view did not move
});

test("Book refuses bad input and hides the book", () => {
  const cases = [
    ["unsorted_levels", (b) => b.applySnapshot(snap([L(99, 1), L(100, 1)], [L(101, 1)]))],
    ["crossed_book", (b) => b.applySnapshot(snap([L(101, 1)], [L(100, 1)]))],
    ["bad_size", (b) => b.applySnapshot(snap([L(99, 0)], [L(101, 1)]))],
    ["checksum_mismatch", (b) => b.applySnapshot({ ...snap([L(99, 1)], [L(101, 1)]), checksum: 1 })],
    ["seq_gap", (b) => { b.applySnapshot(snap([L(99, 1)], [L(101, 1)])); return b.applyDelta(delta(3n, [], [], 0, { prevSeq: 0n })); }],
    ["prev_seq_mismatch", (b) => { b.applySnapshot(snap([L(99, 1)], [L(101, 1)])); return b.applyDelta(delta(2n, [], [], 0, { prevSeq: 5n })); }],
    ["seq_gap", (b) => { b.applySnapshot(snap([L(99, 1)], [L(101, 1)], 5n)); return b.applyDelta(delta(4n, [], [], 0, { prevSeq: 0n })); }],
    ["checksum_mismatch", (b) => { b.applySnapshot(snap([L(99, 1)], [L(101, 1)])); return b.applyDelta(delta(2n, [L(98, 1)], [], 12345)); }],
    ["bad_size", (b) => { b.applySnapshot(snap([L(99, 1)], [L(101, 1)])); return b.applyDelta(delta(2n, [L(98, -1)], [], 0)); }],
    ["crossed_book", (b) => { b.applySnapshot(snap([L(99, 1)], [L(101, 1)])); return b.applyDelta(delta(2n, [L(102, 1)], [], bookChecksum([L(102, 1), L(99, 1)], [L(101, 1)]))); }],
    ["unexpected_delta", (b) => b.applyDelta(delta(2n, [], [], 0))],
    ["too_deep", (b) => new Book("X", "book.2").applySnapshot(snap([L(99, 1), L(98, 1), L(97, 1)], [L(101, 1)]))],
    ["too_many_updates", (b) => {
      b.applySnapshot(snap([L(99, 1)], [L(101, 1)]));
      return b.applyDelta(delta(2n, Array.from({ length: 9 }, (_, i) => L(90 - i, 1)), [], 0));
    }, { maxLevels: 2 }],
  ];
  for (const [code, run, options] of cases) {
    const b = new Book("X", "book", options);
    const f = run(b);
    assert.equal(f?.code, code, code);
    if (b.status !== "syncing") {
      assert.equal(b.status, "unverified");
      assert.equal(b.getSnapshot().bids.length, 0);
    }
  }
});

test("book.N: the client's own N-level book, prev_seq chain with seq jumps", () => {
  const b = new Book("X", "book.2@100ms");
  assert.equal(b.applySnapshot(snap([L(100, 1), L(99, 1)], [L(101, 1)], 10n, { channel: "book.2@100ms" })), undefined);
  // seq jumps (conflated), prev_seq chains; a level entering pushes one out
  const bids = [L(100, 1), L(99, 7)];
  assert.equal(b.applyDelta(delta(15n, [L(99, 7)], [], bookChecksum(bids, [L(101, 1)]), { prevSeq: 10n, channel: "book.2@100ms" })), undefined);
  assert.equal(b.applyDelta(delta(16n, [L(100, 0)], [], 0, { prevSeq: 12n, channel: "book.2@100ms" }))?.code, "prev_seq_mismatch");
});
