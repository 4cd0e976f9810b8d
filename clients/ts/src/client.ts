/**
 * `TickwireClient`: one WebSocket connection to tickwire (PROTOCOL §6–§10), the
 * books and trades it carries, and a store (`client.store`) any UI framework
 * can sit on.
 *
 * What it does for you:
 * - subscribe/unsubscribe as promises (answered by `Subscribed`/`Unsubscribed`,
 *   rejected by `Error`, matched by `id`);
 * - auth (§8): the token (a string or an async provider) in a first `auth`
 *   request, refreshed before `Authenticated.expires_at_ns`;
 * - every book message checked (`prev_seq`, seq, §5 checksum, sorted, uncrossed,
 *   sizes); on a failure the book is hidden (`unverified`) and resubscribed; a
 *   book that keeps failing, or a frame that does not decode, costs a reconnect;
 * - reconnect with exponential backoff and jitter, resuming each symbol from the
 *   last epoch/seq (§10); a silent connection (no message, no ping for
 *   `silenceTimeoutMs`) is dropped and reconnected; when idle it sends a cheap
 *   request every `keepaliveMs`, whose answer proves the link (browsers cannot
 *   see pings).
 */
import { Book, isBookChannel } from "./book.js";
import type { BookFault, BookView } from "./book.js";
import { decodeJson, decodeProto, DecodeError } from "./codec.js";
import { Emitter } from "./emitter.js";
import type {
  DeltaMessage, ErrorMessage, Instrument, ServerMessage, SnapshotMessage, StaleMessage,
  SubscribedMessage, TradeMessage, UnsubscribedMessage,
} from "./types.js";

export type Encoding = "proto" | "json";
/**
 * `idle` (not connected yet), `connecting` (until the first time live, retries
 * included), `live` (open, authenticated when a token is set), `reconnecting`
 * (lost after being live: backing off or reopening), `closed` (by `close()`, or
 * lost with `reconnect: false`).
 */
export type ConnectionStatus = "idle" | "connecting" | "live" | "reconnecting" | "closed";
/** A token, or a function returning one (called at every connect and refresh). */
export type TokenSource = string | (() => string | Promise<string>);

/** The WHATWG WebSocket surface the client uses (browsers' `WebSocket`, the `ws` package). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
/** `WebSocket.OPEN` (the same in browsers and the `ws` package). */
const WS_OPEN = 1;
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** `ws://host:8080/ws` */
  url: string;
  /** Wire encoding of server messages (default `proto`): subprotocol `tickwire.v1.proto` or `tickwire.v1.json`. */
  encoding?: Encoding;
  /** JWT for `--auth required|optional` (PROTOCOL §8), sent in an `auth` request. */
  token?: TokenSource;
  /** The WebSocket class; default `globalThis.WebSocket`. In Node 20 pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect after a lost connection (default true). */
  reconnect?: boolean;
  /** First reconnect delay (default 500 ms); doubles per failed attempt, with jitter. */
  initialBackoffMs?: number;
  /** Largest reconnect delay (default 30 s). */
  maxBackoffMs?: number;
  /** No message (nor ping) for this long: the connection is dropped and reconnected (default 45 s). */
  silenceTimeoutMs?: number;
  /** Idle for this long: a cheap request is sent so that its answer proves the link (default 15 s). */
  keepaliveMs?: number;
  /** Refresh the token this long before it expires (default 60 s, or half its life if shorter). */
  refreshBeforeMs?: number;
  /** Trades kept per symbol in the store (default 100). */
  maxTrades?: number;
  /** A book failing its checks this many times in a row costs a reconnect instead of a resubscribe (default 3). */
  maxBookFaults?: number;
  /**
   * A snapshot the server owes (after a subscribe, a resync or a slow-consumer
   * `Stale`) and has not sent within this long is asked for again (default 10 s;
   * not after `feed_gap`/`feed_down`, which wait for the feed).
   */
  snapshotTimeoutMs?: number;
  /** Largest book accepted per side (default 10 000 levels). */
  maxLevels?: number;
  /** Requests sent per second at most, after a burst (default 5 and 10; the server's default limit is 10/s, burst 20). */
  requestsPerSec?: number;
  requestBurst?: number;
}

/** A trade with its symbol's decimals. */
export interface TradeEvent extends TradeMessage {
  priceDecimals: number;
  sizeDecimals: number;
}

/** Anything that went wrong; the client has already acted on it (resync, reconnect, reject). */
export interface ClientError {
  /** A server error code (`bad_request`, `forbidden`, ...), a book fault (`checksum_mismatch`, ...),
   * or `decode_error`, `unsolicited`, `token_error`, `connection_closed`, `silent_connection`, `trade_gap`. */
  code: string;
  message: string;
  symbol?: string;
  id?: number;
}

export interface ClientEvents {
  status: { status: ConnectionStatus };
  update: BookView;
  trade: TradeEvent;
  stale: { symbol: string; reason: string; dropped: bigint };
  resync: { symbol: string; channel: string; reason: string };
  error: ClientError;
  authenticated: { sub: string; expiresAtNs: bigint };
  /** Every `Subscribed`, the client's own resubscriptions included (see `resumed`, §10). */
  subscribed: SubscribedMessage;
  unsubscribed: UnsubscribedMessage;
}

/** What `client.store.getSnapshot()` returns: immutable, the same object until something changes. */
export interface ClientSnapshot {
  readonly status: ConnectionStatus;
  /** One book per symbol (a connection holds one book channel per symbol, §9). */
  readonly books: Readonly<Record<string, BookView>>;
  /** Recent trades per symbol, newest first. */
  readonly trades: Readonly<Record<string, readonly TradeEvent[]>>;
  readonly lastError: ClientError | undefined;
}

/** The framework-neutral store: `useSyncExternalStore(store.subscribe, store.getSnapshot)`. */
export interface Store<T> {
  subscribe(listener: () => void): () => void;
  getSnapshot(): T;
}

/** A rejected subscribe/unsubscribe/auth: the server's `Error`. */
export class TickwireError extends Error {
  override name = "TickwireError";
  constructor(readonly code: string, message: string, readonly id?: number) {
    super(`${code}: ${message}`);
  }
}

interface Wanted {
  book?: string;
  trades: boolean;
}

type RequestKind = "subscribe" | "unsubscribe" | "auth" | "resync" | "resubscribe" | "probe";

interface Request {
  kind: RequestKind;
  symbols: string[];
  channels: string[];
  resolve?: (v: any) => void;
  reject?: (e: Error) => void;
  /** For subscribe: the wanted entries before it, restored if it is refused. */
  before?: Map<string, Wanted | undefined>;
}

interface Connection {
  ws: WebSocketLike;
  open: boolean;
  live: boolean;
  liveSince: number;
  lastRxMs: number;
  lastTxMs: number;
  /** Requests waiting for the rate limiter, encoded. */
  outbox: string[];
  tokens: number;
  refillMs: number;
  drainTimer: ReturnType<typeof setTimeout> | undefined;
}

/**
 * The close code the client sends when it drops a connection it no longer
 * trusts (silent, undecodable, a book failing its checks). Browsers let a
 * script send only 1000 or 3000-4999; the reason text says why.
 */
const CLIENT_CLOSE = 4000;

export class TickwireClient extends Emitter<ClientEvents> {
  private readonly opts: Required<Omit<ClientOptions, "token" | "WebSocket">> & Pick<ClientOptions, "token">;
  private readonly WS: WebSocketConstructor;

  private conn: Connection | undefined;
  private statusValue: ConnectionStatus = "idle";
  private closedByUser = false;
  private everLive = false;
  private attempt = 0;
  private nextId = 1;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private watchdog: ReturnType<typeof setInterval> | undefined;
  private liveWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  private readonly wanted = new Map<string, Wanted>();
  private readonly books = new Map<string, Book>();
  private readonly instruments = new Map<string, Instrument>();
  private readonly lastTradeSeq = new Map<string, bigint>();
  private trades: Record<string, readonly TradeEvent[]> = {};
  /** User requests not yet sent on the current connection. */
  private unsent: Request[] = [];
  /** Requests sent on the current connection, by id. */
  private inflight = new Map<number, Request>();
  /** Symbols with a subscribe/unsubscribe in flight: their stray messages are expected. */
  private changing = new Map<string, number>();
  private lastError: ClientError | undefined;
  /** Books whose snapshot the server owes, by symbol: since when (ms). */
  private readonly owed = new Map<string, number>();

  private storeListeners = new Set<() => void>();
  private snapshot: ClientSnapshot | undefined;
  private notifyQueued = false;

  /** The store over every book and trade of this client (stable snapshots, batched notifications). */
  readonly store: Store<ClientSnapshot> = {
    subscribe: (listener) => {
      this.storeListeners.add(listener);
      return () => {
        this.storeListeners.delete(listener);
      };
    },
    getSnapshot: () => this.getSnapshot(),
  };

  constructor(options: ClientOptions) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error("tickwire: no global WebSocket here (Node 20): pass one, e.g. the ws package's: new TickwireClient({ url, WebSocket })");
    this.WS = WS;
    this.opts = {
      url: options.url,
      encoding: options.encoding ?? "proto",
      token: options.token,
      reconnect: options.reconnect ?? true,
      initialBackoffMs: options.initialBackoffMs ?? 500,
      maxBackoffMs: options.maxBackoffMs ?? 30_000,
      silenceTimeoutMs: options.silenceTimeoutMs ?? 45_000,
      keepaliveMs: options.keepaliveMs ?? 15_000,
      refreshBeforeMs: options.refreshBeforeMs ?? 60_000,
      maxTrades: options.maxTrades ?? 100,
      maxBookFaults: options.maxBookFaults ?? 3,
      maxLevels: options.maxLevels ?? 10_000,
      snapshotTimeoutMs: options.snapshotTimeoutMs ?? 10_000,
      requestsPerSec: options.requestsPerSec ?? 5,
      requestBurst: options.requestBurst ?? 10,
    };
  }

  /** The server URL this client connects to. */
  get url(): string {
    return this.opts.url;
  }

  get status(): ConnectionStatus {
    return this.statusValue;
  }

  /** Opens the connection; resolves once it is live (authenticated when a token is set). */
  connect(): Promise<void> {
    this.closedByUser = false;
    const p = this.whenLive();
    if (!this.conn && !this.reconnectTimer) this.open();
    return p;
  }

  /** Resolves when the connection is (next) live. */
  whenLive(): Promise<void> {
    if (this.conn?.live) return Promise.resolve();
    return new Promise((resolve, reject) => this.liveWaiters.push({ resolve, reject }));
  }

  /** Drops the connection and reconnects at once, resuming every subscription (§10). */
  reconnect(): void {
    if (this.closedByUser) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.dropConnection(1000, "client reconnects");
    this.open();
  }

  /** Closes for good: no reconnect; pending requests are rejected. */
  close(): void {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.dropConnection(1000, "client closed");
    const err = new TickwireError("closed", "the client was closed");
    for (const r of [...this.unsent, ...this.inflight.values()]) r.reject?.(err);
    this.unsent = [];
    this.inflight.clear();
    for (const w of this.liveWaiters.splice(0)) w.reject(err);
    this.setStatus("closed");
  }

  /**
   * Subscribes (PROTOCOL §6): resolves with the `Subscribed` answer, rejects with
   * a `TickwireError` for the server's `Error`. Kept across reconnects: the
   * client resubscribes (and resumes) by itself. Book channels: `book`,
   * `book.N`, `book@Tms`, `book.N@Tms`; one per symbol, a new one replaces it.
   */
  subscribe(symbols: string[], channels: string[] = ["book"]): Promise<SubscribedMessage> {
    const before = new Map<string, Wanted | undefined>();
    for (const s of symbols) {
      const w = this.wanted.get(s);
      before.set(s, w && { ...w });
      const next: Wanted = w ? { ...w } : { trades: false };
      for (const c of channels) {
        if (c === "trades") next.trades = true;
        else if (isBookChannel(c)) next.book = c;
      }
      this.wanted.set(s, next);
    }
    return new Promise((resolve, reject) => {
      this.queue({ kind: "subscribe", symbols: [...symbols], channels: [...channels], resolve, reject, before });
    });
  }

  /** Unsubscribes; `book` ends whichever book channel the symbol holds (§9). */
  unsubscribe(symbols: string[], channels: string[] = ["book"]): Promise<UnsubscribedMessage> {
    for (const s of symbols) {
      const w = this.wanted.get(s);
      if (!w) continue;
      for (const c of channels) {
        if (c === "trades") {
          w.trades = false;
          this.lastTradeSeq.delete(s);
          if (this.trades[s]) {
            const { [s]: _gone, ...rest } = this.trades;
            this.trades = rest;
          }
        } else if (isBookChannel(c)) {
          w.book = undefined;
          this.removeBook(s);
        }
      }
      if (!w.book && !w.trades) this.wanted.delete(s);
    }
    this.changed();
    return new Promise((resolve, reject) => {
      this.queue({ kind: "unsubscribe", symbols: [...symbols], channels: [...channels], resolve, reject });
    });
  }

  /** The book held for `symbol`, if it is subscribed to a book channel. */
  book(symbol: string): BookView | undefined {
    return this.books.get(symbol)?.getSnapshot();
  }

  getSnapshot(): ClientSnapshot {
    if (this.snapshot) return this.snapshot;
    const books: Record<string, BookView> = {};
    for (const [s, b] of this.books) books[s] = b.getSnapshot();
    this.snapshot = Object.freeze({
      status: this.statusValue,
      books: Object.freeze(books),
      trades: Object.freeze({ ...this.trades }),
      lastError: this.lastError,
    });
    return this.snapshot;
  }

  // ---- connection lifecycle ----

  private open(): void {
    this.setStatus(this.everLive ? "reconnecting" : "connecting");
    const proto = this.opts.encoding === "json" ? "tickwire.v1.json" : "tickwire.v1.proto";
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.opts.url, [proto]);
    } catch (e) {
      this.report({ code: "connection_closed", message: `cannot open ${this.opts.url}: ${(e as Error).message}` });
      this.scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    const now = Date.now();
    const conn: Connection = {
      ws, open: false, live: false, liveSince: 0, lastRxMs: now, lastTxMs: now,
      outbox: [], tokens: this.opts.requestBurst, refillMs: now, drainTimer: undefined,
    };
    this.conn = conn;
    ws.onopen = () => {
      if (this.conn !== conn) return;
      conn.open = true;
      conn.lastRxMs = Date.now();
      if (this.opts.token !== undefined) void this.authenticate(conn, "auth");
      else this.goLive(conn);
    };
    ws.onmessage = (ev) => {
      if (this.conn !== conn) return;
      conn.lastRxMs = Date.now();
      this.handleFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.conn !== conn) return;
      const normal = ev.code === 1000 || ev.code === 1001;
      if (!this.closedByUser && !normal) {
        this.report({ code: "connection_closed", message: `connection closed: ${ev.code} ${ev.reason ?? ""}`.trim() });
      }
      this.connectionLost();
    };
    ws.onerror = () => {
      // Always followed by onclose (WHATWG); nothing to do here.
    };
    // The `ws` package shows pings to Node; browsers answer them unseen.
    const node = ws as unknown as { on?: (ev: string, fn: () => void) => void };
    if (typeof node.on === "function") {
      node.on("ping", () => {
        if (this.conn === conn) conn.lastRxMs = Date.now();
      });
    }
    this.startWatchdog();
  }

  private startWatchdog(): void {
    if (this.watchdog) return;
    const tick = Math.max(50, Math.min(1000, this.opts.silenceTimeoutMs / 4, this.opts.keepaliveMs / 2));
    this.watchdog = setInterval(() => this.checkSilence(), tick);
    const t = this.watchdog as unknown as { unref?: () => void };
    t.unref?.();
  }

  private checkSilence(): void {
    const conn = this.conn;
    if (!conn) return;
    const now = Date.now();
    // Also bounds the opening handshake and the auth answer (lastRxMs starts at open()).
    if (now - conn.lastRxMs >= this.opts.silenceTimeoutMs) {
      const what = conn.open ? "no message" : "not open";
      this.report({ code: "silent_connection", message: `${what} for ${now - conn.lastRxMs} ms` });
      this.reconnectNow(CLIENT_CLOSE, "silent connection");
      return;
    }
    if (conn.live) this.checkOwedSnapshots(now);
    if (conn.live && now - conn.lastRxMs >= this.opts.keepaliveMs && now - conn.lastTxMs >= this.opts.keepaliveMs) {
      // An empty unsubscribe changes nothing and is answered Unsubscribed
      // (docs/protocol.md "Answers"): proof of life.
      this.send({ kind: "probe", symbols: [], channels: ["trades"] });
    }
  }

  private checkOwedSnapshots(now: number): void {
    for (const [symbol, since] of this.owed) {
      if (now - since < this.opts.snapshotTimeoutMs) continue;
      const b = this.books.get(symbol);
      if (!b) {
        this.owed.delete(symbol);
        continue;
      }
      b.faults++;
      this.fault(b, { code: "snapshot_timeout", message: `no snapshot for ${symbol} ${b.channel} within ${now - since} ms` });
      if (!this.conn) return; // the fault cost a reconnect
    }
  }

  private goLive(conn: Connection): void {
    conn.live = true;
    conn.liveSince = Date.now();
    this.everLive = true;
    this.setStatus("live");
    this.resubscribeAll();
    for (const w of this.liveWaiters.splice(0)) w.resolve();
  }

  private async authenticate(conn: Connection, kind: "auth" | "refresh"): Promise<void> {
    let token: string;
    try {
      const src = this.opts.token!;
      token = typeof src === "string" ? src : await src();
    } catch (e) {
      this.report({ code: "token_error", message: `the token provider failed: ${(e as Error).message}` });
      if (kind === "auth" && this.conn === conn) this.reconnectNow(CLIENT_CLOSE, "no token");
      else this.scheduleRefresh(conn, 5_000);
      return;
    }
    if (this.conn !== conn || !conn.open) return;
    const id = this.nextId++;
    this.inflight.set(id, { kind: "auth", symbols: [], channels: [], resolve: () => {
      if (kind === "auth") this.goLive(conn);
    } });
    this.rawSend(conn, { op: "auth", token, id }, true);
  }

  private scheduleRefresh(conn: Connection, delayMs: number): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      if (this.conn === conn && conn.open) void this.authenticate(conn, "refresh");
    }, Math.max(1_000, Math.min(delayMs, 2 ** 31 - 1)));
    (this.refreshTimer as unknown as { unref?: () => void }).unref?.();
  }

  /** Drops the current socket and reconnects at once (counts as a failed attempt). */
  private reconnectNow(code: number, reason: string): void {
    this.dropConnection(code, reason);
    this.connectionLost();
  }

  private dropConnection(code: number, reason: string): void {
    const conn = this.conn;
    if (!conn) return;
    this.conn = undefined;
    conn.ws.onopen = conn.ws.onmessage = conn.ws.onclose = null;
    try {
      conn.ws.close(code, reason);
    } catch {
      try {
        conn.ws.close(); // a code or reason the implementation refuses
      } catch {
        // already closed
      }
    }
    this.afterConnection(conn);
  }

  private afterConnection(conn: Connection): void {
    clearTimeout(this.refreshTimer);
    clearTimeout(conn.drainTimer);
    conn.outbox.length = 0;
    clearInterval(this.watchdog);
    this.watchdog = undefined;
    if (conn.live && Date.now() - conn.liveSince > 10_000) this.attempt = 0;
    // Requests in flight: user subscribes are sent again on the next connection;
    // unsubscribes are done (a new connection holds only what is wanted).
    for (const r of this.inflight.values()) {
      if (r.kind === "subscribe") this.unsent.push(r);
      else if (r.kind === "unsubscribe") r.resolve?.({ type: "unsubscribed", id: 0, symbols: r.symbols, channels: r.channels });
    }
    this.inflight.clear();
    this.changing.clear();
    this.owed.clear();
    for (const b of this.books.values()) {
      b.markStale("disconnected");
      this.emit("update", b.getSnapshot());
    }
    this.changed();
  }

  private connectionLost(): void {
    const conn = this.conn;
    if (conn) {
      this.conn = undefined;
      this.afterConnection(conn);
    }
    if (this.closedByUser) return;
    if (!this.opts.reconnect) {
      this.setStatus("closed");
      const err = new TickwireError("connection_closed", "the connection was lost");
      for (const w of this.liveWaiters.splice(0)) w.reject(err);
      for (const r of this.unsent.splice(0)) r.reject?.(err);
      return;
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    this.setStatus(this.everLive ? "reconnecting" : "connecting");
    const base = Math.min(this.opts.maxBackoffMs, this.opts.initialBackoffMs * 2 ** Math.min(this.attempt, 30));
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt++;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.closedByUser) this.open();
    }, delay);
  }

  // ---- requests ----

  private queue(r: Request): void {
    if (this.conn?.live) this.send(r);
    else this.unsent.push(r);
  }

  private send(r: Request, extra: Record<string, unknown> = {}): void {
    const conn = this.conn;
    if (!conn) return;
    const id = this.nextId++;
    this.inflight.set(id, r);
    for (const s of r.symbols) this.changing.set(s, (this.changing.get(s) ?? 0) + 1);
    const op = r.kind === "unsubscribe" || r.kind === "probe" ? "unsubscribe" : "subscribe";
    this.rawSend(conn, { op, symbols: r.symbols, channels: r.channels, id, ...extra });
  }

  /**
   * Queues a request for the socket. Requests leave through a token bucket
   * (`requestsPerSec`, `requestBurst`) kept under the server's request-rate
   * limit (§6, default 10/s, burst 20), so that a burst of subscribes, resyncs
   * or a reconnect's resubscriptions is never refused `rate_limited`.
   */
  private rawSend(conn: Connection, msg: Record<string, unknown>, first = false): void {
    // bigints (seqs, epochs) as exact JSON numbers
    const text = JSON.stringify(msg, (_k, v) => (typeof v === "bigint" ? `\u0000${v}` : v)).replace(
      /"\\u0000(-?\d+)"/g,
      "$1",
    );
    if (first) conn.outbox.unshift(text);
    else conn.outbox.push(text);
    this.drain(conn);
  }

  private drain(conn: Connection): void {
    // A socket that is closing (the server's close frame came first) takes
    // nothing: a browser would log each send as an error, and the close
    // handler asks again for whatever is wanted on the next connection.
    if (conn.ws.readyState !== WS_OPEN) return;
    const now = Date.now();
    conn.tokens = Math.min(this.opts.requestBurst, conn.tokens + ((now - conn.refillMs) / 1000) * this.opts.requestsPerSec);
    conn.refillMs = now;
    while (conn.outbox.length && conn.tokens >= 1) {
      const text = conn.outbox.shift()!;
      conn.tokens -= 1;
      conn.lastTxMs = now;
      try {
        conn.ws.send(text);
      } catch (e) {
        this.report({ code: "connection_closed", message: `send failed: ${(e as Error).message}` });
        return;
      }
    }
    if (conn.outbox.length && !conn.drainTimer) {
      const waitMs = Math.ceil(((1 - conn.tokens) / this.opts.requestsPerSec) * 1000);
      conn.drainTimer = setTimeout(() => {
        conn.drainTimer = undefined;
        if (this.conn === conn) this.drain(conn);
      }, Math.max(1, waitMs));
    }
  }

  /** PROTOCOL §10: `{SYM: {epoch, book, trades}}` for what this client holds. */
  private resumeFor(symbols: string[]): Record<string, Record<string, bigint>> | undefined {
    const out: Record<string, Record<string, bigint>> = {};
    let any = false;
    for (const s of symbols) {
      const inst = this.instruments.get(s);
      const w = this.wanted.get(s);
      if (!inst || !w) continue;
      const r: Record<string, bigint> = {};
      const b = this.books.get(s);
      if (w.book === "book" && b && b.channel === "book" && b.verified && b.epoch === inst.epoch) r["book"] = b.seq;
      const t = this.lastTradeSeq.get(s);
      if (w.trades && t !== undefined) r["trades"] = t;
      if (r["book"] === undefined && r["trades"] === undefined) continue;
      out[s] = { epoch: inst.epoch, ...r };
      any = true;
    }
    return any ? out : undefined;
  }

  private resumeArg(symbols: string[]): Record<string, unknown> {
    const resume = this.resumeFor(symbols);
    return resume ? { resume } : {};
  }

  private resubscribeAll(): void {
    const covered = new Set<string>();
    const pending = this.unsent.splice(0);
    for (const r of pending) {
      if (r.kind === "unsubscribe") {
        // Nothing is held on a new connection; resolved as done.
        r.resolve?.({ type: "unsubscribed", id: 0, symbols: r.symbols, channels: r.channels });
        continue;
      }
      for (const s of r.symbols) for (const c of r.channels) covered.add(`${s}\n${isBookChannel(c) ? "book" : c}`);
      this.send(r, this.resumeArg(r.symbols));
    }
    const groups = new Map<string, string[]>();
    for (const [s, w] of this.wanted) {
      const chans: string[] = [];
      if (w.book && !covered.has(`${s}\nbook`)) chans.push(w.book);
      if (w.trades && !covered.has(`${s}\ntrades`)) chans.push("trades");
      if (!chans.length) continue;
      const key = chans.join(",");
      const g = groups.get(key);
      if (g) g.push(s);
      else groups.set(key, [s]);
    }
    for (const [key, symbols] of groups) {
      for (let i = 0; i < symbols.length; i += 100) {
        const chunk = symbols.slice(i, i + 100);
        this.send({ kind: "resubscribe", symbols: chunk, channels: key.split(",") }, this.resumeArg(chunk));
      }
    }
  }

  // ---- messages ----

  private handleFrame(data: unknown): void {
    let m: ServerMessage;
    try {
      if (typeof data === "string") {
        m = decodeJson(data, (s) => this.decimalsOf(s));
      } else if (data instanceof ArrayBuffer) {
        m = decodeProto(new Uint8Array(data));
      } else if (ArrayBuffer.isView(data)) {
        m = decodeProto(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      } else {
        throw new DecodeError("frame of an unknown kind");
      }
    } catch (e) {
      const sym = e instanceof DecodeError ? e.unknownSymbol : undefined;
      if (sym !== undefined && !this.wanted.has(sym)) {
        if (!this.changing.has(sym)) {
          this.report({ code: "unsolicited", symbol: sym, message: `message for ${sym}, not subscribed` });
        }
        return;
      }
      // A message lost to an undecodable frame may be any book's: start over (resuming).
      this.report({ code: "decode_error", message: (e as Error).message });
      this.reconnectNow(CLIENT_CLOSE, "undecodable frame");
      return;
    }
    try {
      this.handleMessage(m);
    } catch (e) {
      this.report({ code: "internal_error", message: `handling ${m.type}: ${(e as Error).message}` });
      this.reconnectNow(CLIENT_CLOSE, "client error");
    }
  }

  private decimalsOf(symbol: string): { priceDecimals: number; sizeDecimals: number } | undefined {
    const b = this.books.get(symbol);
    if (b && b.seq > 0n) return b;
    return this.instruments.get(symbol);
  }

  private handleMessage(m: ServerMessage): void {
    switch (m.type) {
      case "snapshot":
        return this.onSnapshot(m);
      case "delta":
        return this.onDelta(m);
      case "trade":
        return this.onTrade(m);
      case "subscribed":
        return this.onSubscribed(m);
      case "unsubscribed":
        return this.onUnsubscribed(m);
      case "error":
        return this.onError(m);
      case "stale":
        return this.onStale(m);
      case "authenticated": {
        const r = this.inflight.get(m.id);
        this.inflight.delete(m.id);
        this.emit("authenticated", { sub: m.sub, expiresAtNs: m.expiresAtNs });
        const conn = this.conn;
        if (conn) {
          const remaining = Number(m.expiresAtNs / 1_000_000n) - Date.now();
          const before = this.opts.refreshBeforeMs;
          this.scheduleRefresh(conn, remaining > 2 * before ? remaining - before : remaining / 2);
        }
        r?.resolve?.(m);
        return;
      }
    }
  }

  /** The book a message is for, or undefined (reported unless a request in flight explains it). */
  private bookFor(symbol: string, channel: string, what: string): Book | undefined {
    const b = this.books.get(symbol);
    if (b && b.channel === channel) return b;
    if (!this.changing.has(symbol)) {
      this.report({ code: "unsolicited", symbol, message: `${what} for ${symbol} channel ${channel}, not subscribed` });
    }
    return undefined;
  }

  private onSnapshot(m: SnapshotMessage): void {
    const b = this.bookFor(m.symbol, m.channel, "snapshot");
    if (!b) return;
    const inst = this.instruments.get(m.symbol);
    this.instruments.set(m.symbol, {
      symbol: m.symbol, priceDecimals: m.priceDecimals, sizeDecimals: m.sizeDecimals, epoch: m.epoch,
    });
    if (inst && inst.epoch !== m.epoch) this.lastTradeSeq.delete(m.symbol);
    this.owed.delete(m.symbol);
    this.afterBookMessage(b, b.applySnapshot(m));
  }

  private onDelta(m: DeltaMessage): void {
    const b = this.bookFor(m.symbol, m.channel, "delta");
    if (!b) return;
    // Not live: a snapshot is coming (resync, slow consumer, resubscribe) or the
    // feed is down; deltas before it may predate it and are dropped (appendix A).
    if (b.status !== "live") return;
    this.afterBookMessage(b, b.applyDelta(m));
  }

  private afterBookMessage(b: Book, fault: BookFault | undefined): void {
    if (fault && !this.fault(b, fault)) return;
    this.changed();
    this.emit("update", b.getSnapshot());
  }

  /**
   * A book failed a check (or its snapshot is overdue): resubscribe it, or
   * reconnect when it keeps failing. Returns false when it cost a reconnect.
   */
  private fault(b: Book, fault: { code: string; message: string }): boolean {
    this.report({ code: fault.code, symbol: b.symbol, message: fault.message });
    if (b.faults >= this.opts.maxBookFaults) {
      this.report({ code: "resync_failed", symbol: b.symbol, message: `${b.faults} failed checks in a row: reconnecting` });
      this.reconnectNow(CLIENT_CLOSE, "book keeps failing its checks");
      return false;
    }
    this.emit("resync", { symbol: b.symbol, channel: b.channel, reason: fault.code });
    this.owed.set(b.symbol, Date.now());
    this.send({ kind: "resync", symbols: [b.symbol], channels: [b.channel] });
    return true;
  }

  private onTrade(m: TradeMessage): void {
    const w = this.wanted.get(m.symbol);
    if (!w?.trades) {
      if (!this.changing.has(m.symbol)) {
        this.report({ code: "unsolicited", symbol: m.symbol, message: `trade for ${m.symbol}, not subscribed` });
      }
      return;
    }
    const last = this.lastTradeSeq.get(m.symbol);
    if (last !== undefined && m.seq <= last) return; // replayed twice (resume): already seen
    if (last !== undefined && m.seq > last + 1n) {
      this.report({ code: "trade_gap", symbol: m.symbol, message: `trades ${last + 1n}..${m.seq - 1n} missing` });
    }
    this.lastTradeSeq.set(m.symbol, m.seq);
    const d = this.decimalsOf(m.symbol);
    const t: TradeEvent = { ...m, priceDecimals: d?.priceDecimals ?? 0, sizeDecimals: d?.sizeDecimals ?? 0 };
    const prev = this.trades[m.symbol] ?? [];
    this.trades = { ...this.trades, [m.symbol]: Object.freeze([t, ...prev.slice(0, this.opts.maxTrades - 1)]) };
    this.changed();
    this.emit("trade", t);
  }

  private settle(id: number): Request | undefined {
    const r = this.inflight.get(id);
    if (!r) return undefined;
    this.inflight.delete(id);
    for (const s of r.symbols) {
      const n = (this.changing.get(s) ?? 1) - 1;
      if (n > 0) this.changing.set(s, n);
      else this.changing.delete(s);
    }
    return r;
  }

  private onSubscribed(m: SubscribedMessage): void {
    const r = this.settle(m.id);
    for (const i of m.instruments) {
      const old = this.instruments.get(i.symbol);
      if (old && old.epoch !== i.epoch) this.lastTradeSeq.delete(i.symbol);
      this.instruments.set(i.symbol, i);
    }
    const resumed = new Set(m.resumed);
    for (const s of m.symbols) {
      const w = this.wanted.get(s);
      for (const c of m.channels) {
        if (isBookChannel(c)) {
          if (w?.book !== c) continue; // replaced or dropped since: its answer is moot
          let b = this.books.get(s);
          const isResumed = !!b && b.channel === c && resumed.has(`${s}:${c}`);
          if (!b || b.channel !== c) {
            b = new Book(s, c, { maxLevels: this.opts.maxLevels });
            this.books.set(s, b);
          } else if (isResumed) {
            b.resume();
          } else {
            b.expectSnapshot("subscribed");
          }
          if (isResumed) this.owed.delete(s);
          else if (!this.owed.has(s)) this.owed.set(s, Date.now());
        } else if (c === "trades" && !resumed.has(`${s}:trades`)) {
          this.lastTradeSeq.delete(s);
        }
      }
    }
    this.changed();
    this.emit("subscribed", m);
    r?.resolve?.(m);
  }

  private onUnsubscribed(m: UnsubscribedMessage): void {
    const r = this.settle(m.id);
    if (r?.kind === "probe") return;
    if (!r) {
      // The server ended these itself (a token refresh narrowed the entitlements, §8).
      for (const s of m.symbols) {
        const w = this.wanted.get(s);
        if (!w) continue;
        for (const c of m.channels) {
          if (c === "trades") w.trades = false;
          else if (isBookChannel(c)) {
            w.book = undefined;
            this.removeBook(s);
          }
        }
        if (!w.book && !w.trades) this.wanted.delete(s);
      }
      this.changed();
    }
    this.emit("unsubscribed", m);
    r?.resolve?.(m);
  }

  private onError(m: ErrorMessage): void {
    const r = this.settle(m.id);
    if (r?.kind === "probe") return;
    this.report({ code: m.code, message: m.message, id: m.id });
    if (!r) return;
    if (r.kind === "auth" && this.conn?.live) {
      // A refused refresh: try again with the provider's next token until the
      // old one expires (then the server closes 4004 and the client reconnects).
      this.scheduleRefresh(this.conn, 10_000);
    }
    if (m.code === "rate_limited" && r.kind !== "auth") {
      // Refused for the rate, not the content: sent again in a moment, the promise kept.
      const conn = this.conn;
      setTimeout(() => {
        if (this.conn === conn && conn?.live) this.send(r, r.kind === "unsubscribe" ? {} : this.resumeArg(r.symbols));
        else if (r.kind === "subscribe") this.unsent.push(r);
        else if (r.kind === "unsubscribe") r.resolve?.({ type: "unsubscribed", id: 0, symbols: r.symbols, channels: r.channels });
      }, 1_000);
      return;
    }
    if (r.kind === "subscribe" && r.before) {
      // All-or-nothing (§6): nothing changed on the server; undo the wish.
      for (const [s, w] of r.before) {
        if (w) this.wanted.set(s, w);
        else this.wanted.delete(s);
        const b = this.books.get(s);
        if (b && b.channel !== w?.book) this.removeBook(s);
      }
      this.changed();
    }
    if ((r.kind === "resubscribe" || r.kind === "resync") && m.code !== "bad_request" && m.code !== "forbidden") {
      // Ours, not the user's: e.g. unknown_symbol on an engine that restarted
      // before its feed came back. Tried again while still wanted.
      const conn = this.conn;
      setTimeout(() => {
        if (this.conn !== conn || !conn?.live) return;
        const symbols = r.symbols.filter((s) => {
          const w = this.wanted.get(s);
          return w && r.channels.every((c) => (c === "trades" ? w.trades : w.book === c));
        });
        if (symbols.length) this.send({ ...r, symbols }, this.resumeArg(symbols));
      }, 1_000 + Math.random() * 1_000);
    }
    r.reject?.(new TickwireError(m.code, m.message, m.id));
  }

  private onStale(m: StaleMessage): void {
    const w = this.wanted.get(m.symbol);
    if (!w) {
      if (!this.changing.has(m.symbol)) {
        this.report({ code: "unsolicited", symbol: m.symbol, message: `stale for ${m.symbol}, not subscribed` });
      }
      return;
    }
    const b = this.books.get(m.symbol);
    if (m.reason === "slow_consumer_trades") {
      this.lastTradeSeq.delete(m.symbol);
    } else if (b) {
      if (m.reason === "slow_consumer") {
        b.expectSnapshot(m.reason);
        this.owed.set(m.symbol, Date.now());
      } else {
        // feed_gap, feed_down: the snapshot comes when the feed recovers; not ours to ask.
        b.markStale(m.reason);
        this.owed.delete(m.symbol);
      }
      this.emit("update", b.getSnapshot());
    }
    this.changed();
    this.emit("stale", { symbol: m.symbol, reason: m.reason, dropped: m.dropped });
  }

  // ---- store ----

  private removeBook(symbol: string): void {
    this.owed.delete(symbol);
    if (this.books.delete(symbol)) this.changed();
  }

  private report(e: ClientError): void {
    this.lastError = e;
    this.changed();
    this.emit("error", e);
  }

  private setStatus(s: ConnectionStatus): void {
    if (this.statusValue === s) return;
    this.statusValue = s;
    this.changed();
    this.emit("status", { status: s });
  }

  private changed(): void {
    this.snapshot = undefined;
    if (this.notifyQueued) return;
    this.notifyQueued = true;
    queueMicrotask(() => {
      this.notifyQueued = false;
      for (const l of [...this.storeListeners]) {
        try {
          l();
        } catch (err) {
          this.onListenerError(err);
        }
      }
    });
  }
}
