// Shared test helpers: a fake tickwire (a `ws` server scripted per test), the
// real engine (spawned from TICKWIRE_BIN or <repo>/target/release/tickwire), a
// JSON-lines feed, and bounded waits.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { connect } from "node:net";
import { createInterface } from "node:readline";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocketServer } from "ws";
import { bookChecksum } from "../dist/index.js";

export const L = (price, size) => ({ price: BigInt(price), size: BigInt(size) });

/** Polls `cond` until it returns truthy; throws `what` after `timeoutMs`. */
export async function waitFor(cond, what, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- the fake server (JSON encoding unless a test sends binary) ----

/**
 * A WebSocketServer on 127.0.0.1 port 0 that accepts either subprotocol.
 * `onRequest(req, conn)` is called with each parsed client request;
 * `conn.n` numbers the connections from 1.
 */
export async function fakeServer(onRequest) {
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (protocols) => [...protocols][0] ?? false,
  });
  await new Promise((r) => wss.once("listening", r));
  const server = { wss, connections: [], requests: [], url: `ws://127.0.0.1:${wss.address().port}/ws` };
  wss.on("connection", (ws) => {
    const conn = { ws, n: server.connections.length + 1, send: (o) => ws.send(typeof o === "string" ? o : JSON.stringify(o)) };
    server.connections.push(conn);
    ws.on("message", (data) => {
      const req = JSON.parse(String(data));
      server.requests.push({ ...req, conn: conn.n });
      onRequest(req, conn);
    });
  });
  server.close = () => new Promise((r) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => r());
  });
  return server;
}

const dec = (m, d) => {
  const s = m.toString().padStart(d + 1, "0");
  return d ? `${s.slice(0, -d)}.${s.slice(-d)}` : s;
};
const pairs = (levels, pd, sd) => levels.map((l) => [dec(l.price, pd), dec(l.size, sd)]);

/** A JSON snapshot (PROTOCOL §6) with its correct checksum unless `checksum` is given. */
export function jsonSnapshot(symbol, seq, bids, asks, extra = {}) {
  return {
    type: "snapshot", symbol, seq: Number(seq), bids: pairs(bids, 2, 0), asks: pairs(asks, 2, 0),
    price_decimals: 2, size_decimals: 0, exchange_ts_ns: 1, ingest_ts_ns: 2,
    checksum: bookChecksum(bids, asks), epoch: 1, channel: "book", ...extra,
  };
}

/** A JSON delta; `after` is the book it leads to (for the checksum). */
export function jsonDelta(symbol, seq, bids, asks, after, extra = {}) {
  return {
    type: "delta", symbol, channel: "book", seq: Number(seq), prev_seq: Number(seq) - 1,
    bids: pairs(bids, 2, 0), asks: pairs(asks, 2, 0), exchange_ts_ns: 3, ingest_ts_ns: 4,
    checksum: bookChecksum(after.bids, after.asks), ...extra,
  };
}

export function jsonSubscribed(req, resumed = []) {
  return {
    type: "subscribed", id: req.id, symbols: req.symbols, channels: req.channels ?? ["book"],
    instruments: req.symbols.map((s) => ({ symbol: s, price_decimals: 2, size_decimals: 0, epoch: 1 })), resumed,
  };
}

// ---- the real engine ----

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

export function engineBinary() {
  const bin = process.env.TICKWIRE_BIN || resolve(repo, "target/release/tickwire");
  if (!existsSync(bin)) {
    throw new Error(
      `tickwire binary not found at ${bin}: build it (cargo build --release) or set TICKWIRE_BIN to its path`,
    );
  }
  return bin;
}

/**
 * Starts `tickwire serve` (ports 0 unless given) and resolves with its
 * addresses once it printed them. `stop()` kills it by PID and waits.
 */
export async function startEngine(extraArgs = [], ports = {}) {
  const bin = engineBinary();
  const args = [
    "serve", "--listen", `127.0.0.1:${ports.ws ?? 0}`, "--ingest", `127.0.0.1:${ports.ingest ?? 0}`,
    "--ingest-json", `127.0.0.1:${ports.json ?? 0}`, "--workers", "1", ...extraArgs,
  ];
  const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });
  let stderr = "";
  proc.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const exited = new Promise((r) => proc.once("exit", (code, sig) => r({ code, sig })));
  const addrs = await new Promise((resolveAddrs, reject) => {
    const out = {};
    const timer = setTimeout(() => reject(new Error(`engine did not print its addresses in 15 s; stderr: ${stderr}`)), 15_000);
    exited.then(({ code, sig }) => {
      clearTimeout(timer);
      reject(new Error(`engine exited (${code ?? sig}) before listening; stderr: ${stderr}`));
    });
    createInterface({ input: proc.stdout }).on("line", (line) => {
      let m;
      if ((m = /^listening on (\S+)/.exec(line))) out.ws = m[1];
      if ((m = /^ingest protobuf (\S+) json (\S+)/.exec(line))) {
        out.ingest = m[1];
        out.json = m[2];
      }
      if (out.ws && out.json) {
        clearTimeout(timer);
        resolveAddrs(out);
      }
    });
  });
  const port = (a) => Number(a.slice(a.lastIndexOf(":") + 1));
  return {
    proc,
    url: `ws://${addrs.ws}/ws`,
    ports: { ws: port(addrs.ws), ingest: port(addrs.ingest), json: port(addrs.json) },
    jsonAddr: addrs.json,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        process.kill(proc.pid, "SIGKILL");
      }
      await exited;
    },
  };
}

/** A JSON-lines feed connection to the engine's ingest (PROTOCOL §3). */
export async function startFeed(jsonAddr, feedId = "ts-test") {
  const i = jsonAddr.lastIndexOf(":");
  const sock = connect({ host: jsonAddr.slice(0, i), port: Number(jsonAddr.slice(i + 1)) });
  await new Promise((r, j) => {
    sock.once("connect", r);
    sock.once("error", j);
  });
  sock.on("error", () => {});
  const feed = {
    sock,
    send(o) {
      sock.write(JSON.stringify(o) + "\n");
    },
    close() {
      sock.destroy();
    },
  };
  feed.send({ type: "hello", feed_id: feedId });
  return feed;
}

/** A reference book kept by the test, with random uncrossed deltas (prices in cents, sizes whole). */
export class RefBook {
  constructor(symbol, seed = 1) {
    this.symbol = symbol;
    this.bids = new Map();
    this.asks = new Map();
    this.seed = seed;
    this.feedSeq = 0;
  }
  rand() {
    // xorshift32: reproducible runs
    let x = this.seed;
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    this.seed = x;
    return x / 2 ** 32;
  }
  levels(side) {
    const m = side === "bids" ? this.bids : this.asks;
    return [...m.entries()].map(([p, s]) => L(p, s)).sort((a, b) => (side === "bids" ? Number(b.price - a.price) : Number(a.price - b.price)));
  }
  snapshotLine(depth = 20) {
    this.bids.clear();
    this.asks.clear();
    for (let i = 0; i < depth; i++) {
      this.bids.set(9_999 - i * 3, 1 + Math.floor(this.rand() * 100));
      this.asks.set(10_001 + i * 3, 1 + Math.floor(this.rand() * 100));
    }
    this.feedSeq++;
    return {
      type: "snapshot", symbol: this.symbol, seq: this.feedSeq, price_decimals: 2, size_decimals: 0,
      bids: this.levels("bids").map((l) => [dec(l.price, 2), String(l.size)]),
      asks: this.levels("asks").map((l) => [dec(l.price, 2), String(l.size)]),
      exchange_ts_ns: Date.now() * 1e6,
    };
  }
  /** A random delta (1-4 updates; bids below 10000, asks above, so never crossed). */
  deltaLine() {
    const bids = [];
    const asks = [];
    const n = 1 + Math.floor(this.rand() * 4);
    for (let k = 0; k < n; k++) {
      const bid = this.rand() < 0.5;
      const m = bid ? this.bids : this.asks;
      const price = bid ? 9_999 - Math.floor(this.rand() * 90) : 10_001 + Math.floor(this.rand() * 90);
      const size = this.rand() < 0.3 ? 0 : 1 + Math.floor(this.rand() * 100);
      if (size === 0) m.delete(price);
      else m.set(price, size);
      (bid ? bids : asks).push([dec(BigInt(price), 2), String(size)]);
    }
    this.feedSeq++;
    return { type: "delta", symbol: this.symbol, seq: this.feedSeq, bids, asks, exchange_ts_ns: Date.now() * 1e6 };
  }
}

/** Whether a client's view equals the reference book (its top `depth` levels per side when given). */
export function sameBook(view, ref, depth = Infinity) {
  if (!view || view.status !== "live") return false;
  const eq = (a, b) => a.length === b.length && a.every((l, i) => l.price === b[i].price && l.size === b[i].size);
  return eq(view.bids, ref.levels("bids").slice(0, depth)) && eq(view.asks, ref.levels("asks").slice(0, depth));
}
