// A hostile or broken server (a `ws` server scripted per test): every kind of
// bad input is reported through the error event and resolved by a resync or a
// reconnect, never a wrong book shown, never an uncaught exception.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { TickwireClient } from "../dist/index.js";
import { fakeServer, jsonDelta, jsonSnapshot, jsonSubscribed, L, waitFor } from "./helpers.mjs";

const GOOD = { bids: [L(9999, 5), L(9998, 7)], asks: [L(10001, 3), L(10002, 1)] };

/**
 * Runs a scenario: the server answers the first subscribe of connection 1 with
 * `first(req, conn)`; every later subscribe (a resync, or after a reconnect) gets
 * Subscribed + a good snapshot at seq 100. Returns what the client saw.
 */
async function scenario(t, first, opts = {}) {
  let answered = 0;
  const server = await fakeServer((req, conn) => {
    if (req.op !== "subscribe") {
      conn.send({ type: "unsubscribed", id: req.id, symbols: req.symbols, channels: req.channels ?? [] });
      return;
    }
    answered++;
    if (answered === 1) return first(req, conn);
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 100, GOOD.bids, GOOD.asks));
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json", initialBackoffMs: 50, ...opts });
  const errors = [];
  const resyncs = [];
  const shown = [];
  client.on("error", (e) => errors.push(e));
  client.on("resync", (e) => resyncs.push(e));
  client.on("update", (v) => shown.push(v));
  t.after(async () => {
    client.close();
    await server.close();
  });
  await client.connect();
  await client.subscribe(["X"]);
  // The end state every scenario must reach: the good book, verified.
  await waitFor(() => client.book("X")?.status === "live" && client.book("X").seq === 100n, "the good snapshot after recovery");
  assert.deepEqual(client.book("X").bids, GOOD.bids);
  assert.deepEqual(client.book("X").asks, GOOD.asks);
  // Never a book shown that failed a check: every view with levels is a verified one.
  for (const v of shown) if (v.bids.length || v.asks.length) assert.ok(v.status === "live" || v.status === "stale");
  return { server, client, errors, resyncs, shown };
}

const firstBook = { bids: [L(9999, 1)], asks: [L(10001, 1)] };

function subscribedThen(...msgs) {
  return (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 1, firstBook.bids, firstBook.asks));
    for (const m of msgs) conn.send(m);
  };
}

test("checksum mismatch on a delta: error, resync, good book", async (t) => {
  const after = { bids: [L(9999, 2)], asks: firstBook.asks };
  const r = await scenario(t, subscribedThen(jsonDelta("X", 2, [L(9999, 2)], [], after, { checksum: 12345 })));
  assert.ok(r.errors.some((e) => e.code === "checksum_mismatch" && e.symbol === "X"));
  assert.equal(r.resyncs.length, 1);
  assert.equal(r.server.connections.length, 1, "a resync, not a reconnect");
  assert.equal(r.server.requests.filter((q) => q.op === "subscribe").length, 2);
});

test("seq skipping forward: seq_gap, resync", async (t) => {
  const after = { bids: [L(9999, 2)], asks: firstBook.asks };
  const r = await scenario(t, subscribedThen(jsonDelta("X", 3, [L(9999, 2)], [], after, { prev_seq: 1 })));
  assert.ok(r.errors.some((e) => e.code === "seq_gap"));
  assert.equal(r.resyncs.length, 1);
});

test("seq going backwards: seq_gap, resync", async (t) => {
  const r = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 5, firstBook.bids, firstBook.asks));
    conn.send(jsonDelta("X", 4, [], [], firstBook, { prev_seq: 5 }));
  });
  assert.ok(r.errors.some((e) => e.code === "seq_gap"));
});

test("prev_seq not the held seq: prev_seq_mismatch, resync", async (t) => {
  const after = { bids: [L(9999, 2)], asks: firstBook.asks };
  const r = await scenario(t, subscribedThen(jsonDelta("X", 2, [L(9999, 2)], [], after, { prev_seq: 7 })));
  assert.ok(r.errors.some((e) => e.code === "prev_seq_mismatch"));
});

test("crossed snapshot: crossed_book, resync", async (t) => {
  const r = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 1, [L(10005, 1)], [L(10001, 1)]));
  });
  assert.ok(r.errors.some((e) => e.code === "crossed_book"));
  assert.equal(r.resyncs.length, 1);
});

test("unsorted snapshot: unsorted_levels, resync", async (t) => {
  const r = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 1, [L(9990, 1), L(9999, 1)], [L(10001, 1)]));
  });
  assert.ok(r.errors.some((e) => e.code === "unsorted_levels"));
});

test("absurd sizes: a zero size in a snapshot (resync) and one over int64 (undecodable: reconnect)", async (t) => {
  const r = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 1, [L(9999, 0)], [L(10001, 1)]));
  });
  assert.ok(r.errors.some((e) => e.code === "bad_size"));
  const r2 = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    const s = jsonSnapshot("X", 1, firstBook.bids, firstBook.asks);
    s.bids[0][1] = "99999999999999999999";
    conn.send(s);
  });
  assert.ok(r2.errors.some((e) => e.code === "decode_error"));
  assert.equal(r2.server.connections.length, 2, "reconnected");
});

test("frames that do not decode: JSON garbage and protobuf garbage, each a reconnect", async (t) => {
  const r = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.send("{not json");
  });
  assert.ok(r.errors.some((e) => e.code === "decode_error"));
  assert.equal(r.server.connections.length, 2);
  const r2 = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.ws.send(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), { binary: true });
  });
  assert.ok(r2.errors.some((e) => e.code === "decode_error"));
  assert.equal(r2.server.connections.length, 2);
});

test("messages for symbols not subscribed: reported, ignored, the book untouched", async (t) => {
  const r = await scenario(t, (req, conn) => {
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 100, GOOD.bids, GOOD.asks));
    conn.send(jsonSnapshot("OTHER", 1, firstBook.bids, firstBook.asks));
    conn.send({ type: "delta", symbol: "OTHER", channel: "book", seq: 2, prev_seq: 1, bids: [], asks: [], checksum: 0, exchange_ts_ns: 0, ingest_ts_ns: 0 });
    conn.send({ type: "stale", symbol: "OTHER", dropped: 0, reason: "feed_gap" });
  });
  await waitFor(() => r.errors.filter((e) => e.code === "unsolicited").length >= 2, "unsolicited reports");
  assert.equal(r.client.getSnapshot().books["OTHER"], undefined);
  assert.equal(r.server.connections.length, 1);
});

test("a server that keeps sending bad checksums: resyncs, then a reconnect", async (t) => {
  let bad = 0;
  const server = await fakeServer((req, conn) => {
    conn.send(jsonSubscribed(req));
    // Connection 1 always lies; connection 2 tells the truth.
    conn.send(jsonSnapshot("X", 100, GOOD.bids, GOOD.asks, conn.n === 1 ? { checksum: ++bad } : {}));
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json", initialBackoffMs: 50, maxBookFaults: 3 });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  t.after(async () => {
    client.close();
    await server.close();
  });
  await client.connect();
  await client.subscribe(["X"]);
  await waitFor(() => client.book("X")?.status === "live", "a verified book on the second connection");
  assert.equal(bad, 3);
  assert.ok(errors.some((e) => e.code === "resync_failed"));
  assert.equal(server.connections.length, 2);
});

test("Error answers reject the matching request only, and undo the wish", async (t) => {
  const server = await fakeServer((req, conn) => {
    if (req.symbols.includes("NOPE")) conn.send({ type: "error", id: req.id, code: "unknown_symbol", message: "NOPE" });
    else {
      conn.send(jsonSubscribed(req));
      conn.send(jsonSnapshot("X", 100, GOOD.bids, GOOD.asks));
    }
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json" });
  t.after(async () => {
    client.close();
    await server.close();
  });
  await client.connect();
  const [a, b] = await Promise.allSettled([client.subscribe(["NOPE"]), client.subscribe(["X"])]);
  assert.equal(a.status, "rejected");
  assert.equal(a.reason.code, "unknown_symbol");
  assert.equal(b.status, "fulfilled");
  assert.deepEqual(b.value.symbols, ["X"]);
  await waitFor(() => client.book("X")?.status === "live", "X live");
  assert.equal(client.book("NOPE"), undefined);
});

test("a silent connection is dropped and reconnected; keepalive probes are sent when idle", async (t) => {
  let silent = true;
  const server = await fakeServer((req, conn) => {
    if (req.op === "unsubscribe") {
      if (!silent) conn.send({ type: "unsubscribed", id: req.id, symbols: [], channels: req.channels });
      return;
    }
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 100, GOOD.bids, GOOD.asks));
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json", initialBackoffMs: 50, keepaliveMs: 200, silenceTimeoutMs: 800 });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  t.after(async () => {
    client.close();
    await server.close();
  });
  await client.connect();
  await client.subscribe(["X"]);
  await waitFor(() => errors.some((e) => e.code === "silent_connection"), "the silence to be noticed", 5_000);
  assert.ok(server.requests.some((q) => q.op === "unsubscribe" && q.symbols.length === 0), "a probe was sent");
  silent = false;
  await waitFor(() => server.connections.length >= 2 && client.book("X")?.status === "live", "reconnected and live");
  const before = server.connections.length;
  await new Promise((r) => setTimeout(r, 1_500));
  assert.equal(server.connections.length, before, "answered probes keep the connection");
});

test("a server that accepts TCP but never answers the upgrade: bounded by the silence timeout, retried", async (t) => {
  const { createServer } = await import("node:net");
  const sockets = [];
  const srv = createServer((s) => sockets.push(s)); // reads nothing, answers nothing
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const client = new TickwireClient({
    url: `ws://127.0.0.1:${srv.address().port}/ws`, WebSocket, initialBackoffMs: 50, silenceTimeoutMs: 300,
  });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  t.after(async () => {
    client.close();
    for (const s of sockets) s.destroy();
    await new Promise((r) => srv.close(r));
  });
  void client.connect().catch(() => {});
  await waitFor(() => sockets.length >= 2, "a second attempt", 5_000);
  assert.ok(errors.some((e) => e.code === "silent_connection" && /not open/.test(e.message)), JSON.stringify(errors));
  assert.equal(client.status, "connecting");
});
