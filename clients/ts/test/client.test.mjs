// Client behaviour against a scripted fake server: request ids, auth before
// anything else, resume after a reconnect (§10), channel variants (§9), the
// store's stable snapshots.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { TickwireClient, bookChecksum } from "../dist/index.js";
import { fakeServer, jsonDelta, jsonSnapshot, jsonSubscribed, L, waitFor } from "./helpers.mjs";

function track(t, client, server) {
  const errors = [];
  client.on("error", (e) => errors.push(e));
  t.after(async () => {
    client.close();
    await server.close();
  });
  return errors;
}

test("auth goes first; nothing else is sent before Authenticated; the token is refreshed before expiry", async (t) => {
  let tokens = 0;
  const server = await fakeServer((req, conn) => {
    if (req.op === "auth") {
      // Expires in 2 s: refreshed at half its life.
      conn.send({ type: "authenticated", id: req.id, sub: "alice", expires_at_ns: (Date.now() + 2_000) * 1e6 });
    } else {
      conn.send(jsonSubscribed(req));
      conn.send(jsonSnapshot("X", 1, [L(1, 1)], [L(2, 1)]));
    }
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json", token: async () => `tok-${++tokens}` });
  const errors = track(t, client, server);
  const subscribed = client.subscribe(["X"]); // before connect: queued until live
  await client.connect();
  await subscribed;
  assert.deepEqual(server.requests.slice(0, 2).map((r) => r.op), ["auth", "subscribe"]);
  assert.equal(server.requests[0].token, "tok-1");
  await waitFor(() => server.requests.filter((r) => r.op === "auth").length >= 2, "a refresh", 5_000);
  assert.equal(server.requests.filter((r) => r.op === "auth")[1].token, "tok-2");
  assert.deepEqual(errors, []);
});

test("resume after a reconnect: epoch and seqs sent; a resumed book carries on without a snapshot", async (t) => {
  const book = { bids: [L(9999, 5)], asks: [L(10001, 3)] };
  const server = await fakeServer((req, conn) => {
    if (req.op !== "subscribe") return;
    if (conn.n === 1) {
      conn.send(jsonSubscribed(req));
      conn.send(jsonSnapshot("X", 10, book.bids, book.asks));
      conn.send({ type: "trade", symbol: "X", seq: 4, price: "1.00", size: "1", aggressor: "bid", trade_id: "a", exchange_ts_ns: 0, ingest_ts_ns: 0 });
    } else {
      conn.send(jsonSubscribed(req, ["X:book", "X:trades"]));
      const after = { bids: [L(9999, 6)], asks: book.asks };
      conn.send(jsonDelta("X", 11, [L(9999, 6)], [], after));
      conn.send({ type: "trade", symbol: "X", seq: 4, price: "1.00", size: "1", aggressor: "bid", trade_id: "a", exchange_ts_ns: 0, ingest_ts_ns: 0 });
      conn.send({ type: "trade", symbol: "X", seq: 5, price: "1.01", size: "2", aggressor: "ask", trade_id: "b", exchange_ts_ns: 0, ingest_ts_ns: 0 });
    }
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json" });
  const errors = track(t, client, server);
  const trades = [];
  client.on("trade", (x) => trades.push(x.seq));
  await client.connect();
  await client.subscribe(["X"], ["book", "trades"]);
  await waitFor(() => client.book("X")?.seq === 10n && trades.length === 1, "first connection");
  client.reconnect();
  await waitFor(() => client.book("X")?.seq === 11n, "the resumed delta");
  await waitFor(() => trades.length === 2, "the new trade");
  const again = server.requests.filter((r) => r.op === "subscribe")[1];
  assert.deepEqual(again.resume, { X: { epoch: 1, book: 10, trades: 4 } });
  assert.deepEqual(trades, [4n, 5n], "the replayed trade 4 is not repeated");
  assert.equal(client.book("X").status, "live");
  assert.deepEqual(client.book("X").bids, [L(9999, 6)]);
  assert.deepEqual(errors, []);
});

test("not resumed: the old book stays stale until the new snapshot replaces it", async (t) => {
  const server = await fakeServer((req, conn) => {
    if (req.op !== "subscribe") return;
    conn.send(jsonSubscribed(req));
    if (conn.n === 1) conn.send(jsonSnapshot("X", 10, [L(1, 1)], [L(2, 1)]));
    else setTimeout(() => conn.send(jsonSnapshot("X", 50, [L(3, 1)], [L(4, 1)])), 200);
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json" });
  const errors = track(t, client, server);
  await client.connect();
  await client.subscribe(["X"]);
  await waitFor(() => client.book("X")?.seq === 10n, "first snapshot");
  client.reconnect();
  await waitFor(() => server.requests.length === 2, "resubscribed");
  assert.equal(client.book("X").status, "stale");
  assert.deepEqual(client.book("X").bids, [L(1, 1)], "still shown: verified as of seq 10");
  await waitFor(() => client.book("X")?.seq === 50n, "the new snapshot");
  assert.equal(client.book("X").status, "live");
  assert.deepEqual(errors, []);
});

test("book.N@Tms: the client's own N-level book, prev_seq chained across seq jumps; a variant replaces the book", async (t) => {
  const ch = "book.2@100ms";
  const server = await fakeServer((req, conn) => {
    if (req.op !== "subscribe") return;
    conn.send(jsonSubscribed(req));
    const c = req.channels[0];
    conn.send(jsonSnapshot("X", 10, [L(100, 1), L(99, 1)], [L(101, 1)], { channel: c }));
    if (c === ch) {
      // Level 98 enters below the top 2: the server sends nothing for it. Level 100 leaves;
      // 98 enters with its full size (§9).
      const after = { bids: [L(99, 1), L(98, 4)], asks: [L(101, 1)] };
      conn.send(jsonDelta("X", 17, [L(100, 0), L(98, 4)], [], after, { channel: ch, prev_seq: 10 }));
    }
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json" });
  const errors = track(t, client, server);
  await client.connect();
  await client.subscribe(["X"], [ch]);
  await waitFor(() => client.book("X")?.seq === 17n, "the conflated delta");
  assert.equal(client.book("X").channel, ch);
  assert.deepEqual(client.book("X").bids, [L(99, 1), L(98, 4)]);
  await client.subscribe(["X"], ["book"]);
  await waitFor(() => client.book("X")?.channel === "book" && client.book("X").status === "live", "the full book replaces it");
  assert.deepEqual(errors, []);
});

test("store: immutable snapshots, stable identity between changes, unchanged books keep their identity", async (t) => {
  const server = await fakeServer((req, conn) => {
    if (req.op === "unsubscribe") {
      conn.send({ type: "unsubscribed", id: req.id, symbols: req.symbols, channels: req.channels });
      return;
    }
    conn.send(jsonSubscribed(req));
    for (const s of req.symbols) conn.send(jsonSnapshot(s, 1, [L(1, 1)], [L(2, 1)]));
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json" });
  const errors = track(t, client, server);
  let notified = 0;
  const off = client.store.subscribe(() => notified++);
  await client.connect();
  await client.subscribe(["A", "B"]);
  await waitFor(() => client.getSnapshot().books["B"]?.status === "live", "both live");
  const s1 = client.store.getSnapshot();
  assert.equal(client.store.getSnapshot(), s1);
  assert.ok(Object.isFrozen(s1) && Object.isFrozen(s1.books));
  assert.ok(notified > 0);
  server.connections[0].send(jsonDelta("A", 2, [L(1, 2)], [], { bids: [L(1, 2)], asks: [L(2, 1)] }));
  await waitFor(() => client.store.getSnapshot() !== s1, "a new snapshot");
  const s2 = client.store.getSnapshot();
  assert.notEqual(s2.books["A"], s1.books["A"]);
  assert.equal(s2.books["B"], s1.books["B"], "B did not change");
  assert.equal(s1.books["A"].seq, 1n, "the old snapshot did not move");
  await client.unsubscribe(["A"]);
  assert.equal(client.store.getSnapshot().books["A"], undefined);
  off();
  assert.deepEqual(errors, []);
  assert.equal(bookChecksum(s2.books["A"].bids, s2.books["A"].asks), s2.books["A"].checksum);
});

test("Stale: feed_gap keeps the verified book flagged stale (no request); slow_consumer waits for its snapshot, drops deltas before it, asks again when it is overdue", async (t) => {
  const server = await fakeServer((req, conn) => {
    if (req.op !== "subscribe") return;
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot("X", 1, [L(1, 1)], [L(2, 1)]));
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json", snapshotTimeoutMs: 500 });
  const errors = track(t, client, server);
  const stale = [];
  client.on("stale", (s) => stale.push(s.reason));
  await client.connect();
  await client.subscribe(["X"]);
  await waitFor(() => client.book("X")?.status === "live", "live");
  const c = server.connections[0];
  c.send({ type: "stale", symbol: "X", dropped: 0, reason: "feed_gap" });
  await waitFor(() => client.book("X").status === "stale", "stale");
  assert.equal(client.book("X").reason, "feed_gap");
  assert.equal(client.book("X").bids.length, 1);
  c.send(jsonSnapshot("X", 5, [L(1, 3)], [L(2, 1)]));
  await waitFor(() => client.book("X").status === "live" && client.book("X").seq === 5n, "live again");
  c.send({ type: "stale", symbol: "X", dropped: 7, reason: "slow_consumer" });
  // A delta before the owed snapshot is dropped (it may predate it); the book is not touched.
  c.send(jsonDelta("X", 6, [L(1, 4)], [], { bids: [L(1, 4)], asks: [L(2, 1)] }));
  await waitFor(() => client.book("X").status === "stale" && client.book("X").reason === "slow_consumer", "awaiting");
  assert.deepEqual(client.book("X").bids, [L(1, 3)]);
  // This server never sends the owed snapshot: asked for again after snapshotTimeoutMs.
  await waitFor(() => client.book("X").status === "live" && client.book("X").seq === 1n, "resynced");
  assert.deepEqual(stale, ["feed_gap", "slow_consumer"]);
  assert.deepEqual(errors.map((e) => e.code), ["snapshot_timeout"]);
  assert.equal(server.requests.filter((r) => r.op === "subscribe").length, 2);
});

test("a burst of requests is paced under the server's rate limit; a rate_limited answer is retried, not rejected", async (t) => {
  const times = [];
  let refused = 0;
  const server = await fakeServer((req, conn) => {
    times.push(Date.now());
    if (times.length === 3) {
      refused++;
      conn.send({ type: "error", id: req.id, code: "rate_limited", message: "slow down" });
      return;
    }
    conn.send(jsonSubscribed(req));
    conn.send(jsonSnapshot(req.symbols[0], 1, [L(1, 1)], [L(2, 1)]));
  });
  const client = new TickwireClient({ url: server.url, WebSocket, encoding: "json", requestsPerSec: 20, requestBurst: 5 });
  const errors = track(t, client, server);
  await client.connect();
  const all = await Promise.all(Array.from({ length: 15 }, (_, i) => client.subscribe([`S${i}`])));
  assert.equal(all.length, 15);
  assert.equal(refused, 1);
  assert.equal(times.length, 16);
  // 5 at once, then 20/s: the last of 16 no sooner than ~(16 - 5) / 20 s after the first.
  assert.ok(times.at(-1) - times[0] >= 450, `paced: ${times.at(-1) - times[0]} ms`);
  assert.deepEqual(errors.map((e) => e.code), ["rate_limited"]);
});

test("nothing is sent on a socket that is closing (a browser logs each such send); what is wanted goes out on the next connection", async (t) => {
  const server = await fakeServer((req, conn) => {
    conn.send(jsonSubscribed(req));
    for (const s of req.symbols) conn.send(jsonSnapshot(s, 1, [L(1, 1)], [L(2, 1)]));
  });
  const sockets = [];
  const sentWhileClosing = [];
  class ClosingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.pretendClosing = false;
      sockets.push(this);
    }
    get readyState() {
      return this.pretendClosing ? 2 : super.readyState;
    }
    send(data, ...rest) {
      if (this.readyState !== 1) sentWhileClosing.push(String(data));
      return super.send(data, ...rest);
    }
  }
  const client = new TickwireClient({ url: server.url, WebSocket: ClosingWebSocket, encoding: "json", initialBackoffMs: 50 });
  const errors = track(t, client, server);
  await client.connect();
  await client.subscribe(["X"]);
  // The server's close frame has come: the socket is closing, not yet closed.
  sockets[0].pretendClosing = true;
  const y = client.subscribe(["Y"]);
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(sentWhileClosing, []);
  sockets[0].pretendClosing = false;
  server.connections[0].ws.close(1001, "going away");
  await y;
  await waitFor(() => client.book("X")?.status === "live" && client.book("Y")?.status === "live", "both books on the next connection");
  const second = server.requests.filter((q) => q.conn === 2 && q.op === "subscribe").flatMap((q) => q.symbols);
  assert.ok(second.includes("X") && second.includes("Y"), `resubscribed: ${second}`);
  assert.deepEqual(sentWhileClosing, []);
  assert.deepEqual(errors.filter((e) => e.code !== "connection_closed" && e.code !== "connection_lost"), []);
});
