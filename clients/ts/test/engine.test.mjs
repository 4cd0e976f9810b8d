// Against the real engine (TICKWIRE_BIN or <repo>/target/release/tickwire),
// started per test on port 0 and killed by PID afterwards. A JSON-lines feed
// sends a snapshot and random deltas while the test keeps a reference book.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocket } from "ws";
import { TickwireClient } from "../dist/index.js";
import { engineBinary, RefBook, sameBook, sleep, startEngine, startFeed, waitFor } from "./helpers.mjs";

engineBinary(); // fail at once, and clearly, when the binary is missing

const SYM = "BTC-USD";

async function setup(t, engineArgs = []) {
  const engine = await startEngine(engineArgs);
  t.after(() => engine.stop());
  const feed = await startFeed(engine.jsonAddr);
  t.after(() => feed.close());
  const ref = new RefBook(SYM, 12345);
  feed.send(ref.snapshotLine());
  return { engine, feed, ref };
}

function newClient(t, url, opts = {}) {
  const client = new TickwireClient({ url, WebSocket, initialBackoffMs: 100, maxBackoffMs: 1_000, ...opts });
  const seen = { errors: [], stale: [], trades: [], subscribed: [] };
  client.on("error", (e) => seen.errors.push(e));
  client.on("stale", (e) => seen.stale.push(e));
  client.on("trade", (e) => seen.trades.push(e));
  client.on("subscribed", (e) => seen.subscribed.push(e));
  t.after(() => client.close());
  return { client, seen };
}

/** Subscribes once the engine lists the symbol (GET /symbols: it has the feed's snapshot). */
async function subscribeWhenKnown(client, channels = ["book"]) {
  const http = client.url.replace(/^ws/, "http").replace(/\/ws$/, "/symbols");
  await waitFor(async () => {
    const r = await fetch(http);
    const body = await r.json();
    return body.symbols.some((s) => s.symbol === SYM);
  }, `${SYM} in /symbols`);
  return client.subscribe([SYM], channels);
}

async function sendDeltas(feed, ref, n) {
  for (let i = 0; i < n; i++) {
    feed.send(ref.deltaLine());
    if (i % 50 === 49) await sleep(5);
  }
}

for (const encoding of ["proto", "json"]) {
  test(`${encoding}: the client's book equals the feed's after random deltas; trades arrive in order`, { timeout: 60_000 }, async (t) => {
    const { engine, feed, ref } = await setup(t);
    const { client, seen } = newClient(t, engine.url, { encoding });
    await client.connect();
    await subscribeWhenKnown(client, ["book", "trades"]);
    await waitFor(() => sameBook(client.book(SYM), ref), "the snapshot");
    await sendDeltas(feed, ref, 600);
    for (let i = 0; i < 5; i++) {
      feed.send({ type: "trade", symbol: SYM, price: "100.01", size: String(i + 1), aggressor: i % 2 ? "bid" : "ask", trade_id: `t-${i}`, exchange_ts_ns: 1 });
    }
    await waitFor(() => sameBook(client.book(SYM), ref), "the book to match the reference", 20_000);
    await waitFor(() => seen.trades.length === 5, "5 trades");
    assert.deepEqual(seen.trades.map((x) => x.seq), [1n, 2n, 3n, 4n, 5n]);
    assert.equal(seen.trades[4].size, 5n);
    assert.equal(seen.trades[0].price, 10001n);
    assert.deepEqual(seen.errors, []);
    const snap = client.getSnapshot();
    assert.equal(snap, client.getSnapshot(), "stable identity between changes");
    assert.equal(snap.books[SYM].seq, 601n);
    assert.equal(snap.trades[SYM].length, 5);
  });
}

test("derived channels (§9): book.N, book.N@Tms and book@Tms books equal the reference's top N, prev_seq checked on each", { timeout: 60_000 }, async (t) => {
  const { engine, feed, ref } = await setup(t);
  const cases = [
    { channel: "book.5", depth: 5, encoding: "proto" },
    { channel: "book.3@50ms", depth: 3, encoding: "json" },
    { channel: "book@100ms", depth: Infinity, encoding: "proto" },
    { channel: "book.20@20ms", depth: 20, encoding: "json" },
  ];
  const clients = [];
  for (const c of cases) {
    const { client, seen } = newClient(t, engine.url, { encoding: c.encoding });
    await client.connect();
    const ok = await subscribeWhenKnown(client, [c.channel]);
    assert.deepEqual(ok.channels, [c.channel]);
    clients.push({ ...c, client, seen });
  }
  for (const c of clients) await waitFor(() => sameBook(c.client.book(SYM), ref, c.depth), `${c.channel} snapshot`);
  for (let round = 0; round < 3; round++) {
    await sendDeltas(feed, ref, 300);
    for (const c of clients) {
      await waitFor(() => sameBook(c.client.book(SYM), ref, c.depth), `${c.channel} after round ${round}`, 20_000);
      assert.equal(c.client.book(SYM).channel, c.channel);
      assert.deepEqual(c.seen.errors, [], c.channel);
    }
  }
});

test("keepalive probes (an empty unsubscribe) are answered by the engine: the link holds, nothing counts as a bad request", { timeout: 60_000 }, async (t) => {
  const { engine, ref } = await setup(t);
  const sent = [];
  class RecordingWebSocket extends WebSocket {
    send(data, ...rest) {
      sent.push(String(data));
      return super.send(data, ...rest);
    }
  }
  const { client, seen } = newClient(t, engine.url, { WebSocket: RecordingWebSocket, keepaliveMs: 200, silenceTimeoutMs: 1_000 });
  await client.connect();
  await subscribeWhenKnown(client);
  await waitFor(() => sameBook(client.book(SYM), ref), "the snapshot");
  // Idle (the feed is quiet): a probe whenever nothing came for 200 ms; an
  // unanswered one would cost a reconnect after 1 s of silence.
  await sleep(2_500);
  const probes = sent.map((x) => JSON.parse(x)).filter((m) => m.op === "unsubscribe" && m.symbols.length === 0);
  assert.ok(probes.length >= 3, `${probes.length} probes sent`);
  assert.deepEqual(seen.errors, []);
  assert.equal(client.book(SYM).status, "live");
  assert.equal(client.status, "live");
  // Rejections are published once a second.
  await sleep(1_200);
  const metrics = await (await fetch(engine.url.replace(/^ws/, "http").replace(/\/ws$/, "/metrics"))).text();
  const bad = metrics
    .split("\n")
    .filter((l) => l.startsWith("tickwire_rejections_total") && l.includes('reason="bad_request"'))
    .map((l) => Number(l.split(" ").pop()));
  assert.deepEqual(bad, [0], "no probe counted as a bad request");
});

test("a feed gap: Stale{feed_gap}, the book shown stale, then live again from the new snapshot", { timeout: 60_000 }, async (t) => {
  const { engine, feed, ref } = await setup(t);
  const { client, seen } = newClient(t, engine.url);
  await client.connect();
  await subscribeWhenKnown(client);
  await sendDeltas(feed, ref, 50);
  await waitFor(() => sameBook(client.book(SYM), ref), "in sync");
  ref.feedSeq += 1; // the next delta skips one seq
  feed.send(ref.deltaLine());
  await waitFor(() => seen.stale.some((s) => s.reason === "feed_gap"), "Stale{feed_gap}");
  assert.equal(client.book(SYM).status, "stale");
  assert.equal(client.book(SYM).reason, "feed_gap");
  feed.send(ref.snapshotLine());
  await sendDeltas(feed, ref, 50);
  await waitFor(() => sameBook(client.book(SYM), ref), "resynced from the new snapshot");
  assert.deepEqual(seen.errors, []);
});

test("a dropped socket: reconnect and resume (§10): the missed deltas and trades replayed, the book still equals the feed's", { timeout: 60_000 }, async (t) => {
  const { engine, feed, ref } = await setup(t);
  const { client, seen } = newClient(t, engine.url);
  await client.connect();
  await subscribeWhenKnown(client, ["book", "trades"]);
  await sendDeltas(feed, ref, 100);
  const trade = (i) => ({ type: "trade", symbol: SYM, price: "100.00", size: "1", aggressor: "bid", trade_id: `r-${i}`, exchange_ts_ns: 1 });
  feed.send(trade(1));
  feed.send(trade(2));
  await waitFor(() => sameBook(client.book(SYM), ref) && seen.trades.length === 2, "in sync");
  const statuses = [];
  client.on("status", (s) => statuses.push(s.status));
  client.reconnect();
  // Missed while away: replayed after Subscribed.resumed, checked by prev_seq and checksum.
  await sendDeltas(feed, ref, 100);
  feed.send(trade(3));
  await waitFor(() => seen.subscribed.length >= 2, "resubscribed");
  await sendDeltas(feed, ref, 100);
  feed.send(trade(4));
  await waitFor(() => sameBook(client.book(SYM), ref), "in sync after the reconnect", 20_000);
  await waitFor(() => seen.trades.length === 4, "every trade once");
  assert.deepEqual(seen.trades.map((x) => x.seq), [1n, 2n, 3n, 4n]);
  assert.deepEqual(statuses, ["reconnecting", "live"]);
  const again = seen.subscribed.at(-1);
  assert.deepEqual(again.symbols, [SYM]);
  // PROTOCOL §10: both resumed (same epoch, history held), no snapshot needed.
  assert.deepEqual([...again.resumed].sort(), [`${SYM}:book`, `${SYM}:trades`]);
  assert.deepEqual(seen.errors, []);
});

test("an engine restart: reconnect with backoff, resubscribe on the new epoch, books equal again", { timeout: 60_000 }, async (t) => {
  let engine = await startEngine();
  t.after(() => engine.stop());
  let feed = await startFeed(engine.jsonAddr);
  const ref = new RefBook(SYM, 99);
  feed.send(ref.snapshotLine());
  const { client, seen } = newClient(t, engine.url);
  await client.connect();
  await subscribeWhenKnown(client);
  await sendDeltas(feed, ref, 100);
  await waitFor(() => sameBook(client.book(SYM), ref), "in sync");
  const epoch1 = client.book(SYM).epoch;
  const ports = engine.ports;
  feed.close();
  await engine.stop();
  await waitFor(() => client.status === "reconnecting", "reconnecting");
  assert.equal(client.book(SYM).status, "stale", "the last verified book stays, flagged stale");
  engine = await startEngine([], ports);
  feed = await startFeed(engine.jsonAddr);
  t.after(() => feed.close());
  feed.send(ref.snapshotLine());
  await sendDeltas(feed, ref, 100);
  await waitFor(() => sameBook(client.book(SYM), ref), "in sync on the restarted engine", 30_000);
  t.diagnostic(`epochs ${epoch1} -> ${client.book(SYM).epoch}`);
  assert.ok(seen.errors.every((e) => e.code === "connection_closed" || e.code === "unknown_symbol"), JSON.stringify(seen.errors));
});

function b64url(x) {
  return Buffer.from(x).toString("base64url");
}
function mintHs256(secret, claims) {
  const h = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const p = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${h}.${p}`).digest("base64url");
  return `${h}.${p}.${sig}`;
}

test("auth: an HS256 JWT in the first request, refreshed before it expires; a bad token is refused", { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tickwire-ts-auth-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const secret = randomBytes(32).toString("hex");
  writeFileSync(join(dir, "jwt.secret"), secret + "\n");
  const { engine, feed, ref } = await setup(t, ["--auth", "required", "--jwt-secret-file", join(dir, "jwt.secret")]);
  let minted = 0;
  const provider = async () => {
    minted++;
    return mintHs256(secret, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 4, tw: { symbols: ["BTC-*"] } });
  };
  const { client, seen } = newClient(t, engine.url, { token: provider, refreshBeforeMs: 60_000 });
  const auths = [];
  client.on("authenticated", (a) => auths.push(a));
  await client.connect();
  assert.equal(auths[0].sub, "alice");
  await subscribeWhenKnown(client);
  await sendDeltas(feed, ref, 50);
  await waitFor(() => sameBook(client.book(SYM), ref), "in sync under auth");
  // A 4 s token is refreshed at half its life.
  await waitFor(() => auths.length >= 2, "a refresh", 10_000);
  assert.ok(minted >= 2);
  assert.ok(auths[1].expiresAtNs >= auths[0].expiresAtNs);
  await assert.rejects(client.subscribe(["ETH-USD"]), (e) => e.code === "forbidden");
  assert.deepEqual(seen.errors.map((e) => e.code), ["forbidden"]);

  const bad = newClient(t, engine.url, { token: "not.a.jwt", reconnect: false });
  await assert.rejects(bad.client.connect());
  assert.ok(bad.seen.errors.some((e) => e.code === "unauthorized"), JSON.stringify(bad.seen.errors));
});
