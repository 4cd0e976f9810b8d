/**
 * `Book`: one (symbol, channel) order book as the client holds it. Pure (no
 * sockets, no clock): it applies snapshots and deltas, checks every message
 * (PROTOCOL §4 sequences, §9 `prev_seq`, §5 checksum, sorted and uncrossed
 * levels, sane sizes) and says what went wrong. The client resyncs on a failure.
 *
 * # Invariants
 * - `status === "live" | "stale"` ⇒ the levels are exactly the server's book at
 *   `seq` (every message checked); otherwise the view shows no levels.
 * - bids strictly descending, asks strictly ascending, every size > 0.
 * - The view (`getSnapshot()`) is immutable and keeps its identity until the book changes.
 */
import { bookChecksum } from "./crc32.js";
import { formatDecimal } from "./decimal.js";
import type { DeltaMessage, PriceLevel, SnapshotMessage } from "./types.js";

/**
 * - `syncing`: waiting for a snapshot (just subscribed, or after a slow-consumer `Stale`).
 * - `live`: verified and current.
 * - `stale`: verified as of `seq`, but no longer updated (feed gap or down, or disconnected).
 * - `unverified`: a check failed; levels hidden until a fresh snapshot.
 */
export type BookStatus = "syncing" | "live" | "stale" | "unverified";

/** An immutable view of a book: what a UI renders. */
export interface BookView {
  readonly symbol: string;
  readonly channel: string;
  readonly status: BookStatus;
  /** Why the book is stale or unverified (`feed_gap`, `checksum_mismatch`, ...). */
  readonly reason: string;
  readonly seq: bigint;
  readonly epoch: bigint;
  /** Best first; empty unless `status` is `live` or `stale`. */
  readonly bids: readonly PriceLevel[];
  readonly asks: readonly PriceLevel[];
  readonly priceDecimals: number;
  readonly sizeDecimals: number;
  readonly checksum: number;
  readonly exchangeTsNs: bigint;
  readonly ingestTsNs: bigint;
}

/** A failed check: the book is now `unverified`. */
export interface BookFault {
  code:
    | "seq_gap"
    | "prev_seq_mismatch"
    | "checksum_mismatch"
    | "unsorted_levels"
    | "crossed_book"
    | "bad_size"
    | "too_deep"
    | "too_many_updates"
    | "bad_decimals"
    | "unexpected_delta";
  message: string;
}

export interface BookOptions {
  /** Refuse books deeper than this per side (default 10 000, twice the engine's default limit). */
  maxLevels?: number;
}

/** The N of `book.N` / `book.N@Tms`, or undefined for full depth. */
export function channelDepth(channel: string): number | undefined {
  const m = /^book\.(\d+)(?:@\d+ms)?$/.exec(channel);
  return m ? Number(m[1]) : undefined;
}

/** Whether a channel name is a book channel (PROTOCOL §9), as opposed to `trades`. */
export function isBookChannel(channel: string): boolean {
  return channel === "book" || channel.startsWith("book.") || channel.startsWith("book@");
}

const EMPTY: readonly PriceLevel[] = Object.freeze([]);

// Index of `price` in a side sorted best first, or -(insertion point) - 1.
function search(side: PriceLevel[], price: bigint, desc: boolean): number {
  let lo = 0;
  let hi = side.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const p = side[mid]!.price;
    if (p === price) return mid;
    if (desc ? p > price : p < price) lo = mid + 1;
    else hi = mid - 1;
  }
  return -lo - 1;
}

function sorted(side: readonly PriceLevel[], desc: boolean): boolean {
  for (let i = 1; i < side.length; i++) {
    const a = side[i - 1]!.price;
    const b = side[i]!.price;
    if (desc ? !(a > b) : !(a < b)) return false;
  }
  return true;
}

export class Book {
  readonly symbol: string;
  readonly channel: string;
  /** N for `book.N` channels: the client keeps its own N-level book (PROTOCOL §9). */
  readonly depth: number | undefined;
  private readonly maxLevels: number;

  private bids: PriceLevel[] = [];
  private asks: PriceLevel[] = [];
  status: BookStatus = "syncing";
  reason = "";
  seq = 0n;
  epoch = 0n;
  priceDecimals = 0;
  sizeDecimals = 0;
  checksum = 0;
  exchangeTsNs = 0n;
  ingestTsNs = 0n;
  /** Checks failed since the last verified message (the client escalates to a reconnect). */
  faults = 0;

  private version = 0;
  private viewVersion = -1;
  private view: BookView | undefined;

  constructor(symbol: string, channel = "book", options: BookOptions = {}) {
    this.symbol = symbol;
    this.channel = channel;
    this.depth = channelDepth(channel);
    this.maxLevels = options.maxLevels ?? 10_000;
  }

  /** Replaces the book. Returns a fault (and leaves the book `unverified`) if the snapshot fails a check. */
  applySnapshot(m: SnapshotMessage): BookFault | undefined {
    this.version++;
    const fault = this.checkSnapshot(m);
    if (fault) return this.fail(fault);
    this.bids = m.bids.slice();
    this.asks = m.asks.slice();
    this.seq = m.seq;
    this.epoch = m.epoch;
    this.priceDecimals = m.priceDecimals;
    this.sizeDecimals = m.sizeDecimals;
    this.exchangeTsNs = m.exchangeTsNs;
    this.ingestTsNs = m.ingestTsNs;
    const sum = bookChecksum(this.bids, this.asks);
    if (sum !== m.checksum) {
      return this.fail({ code: "checksum_mismatch", message: `snapshot seq ${m.seq}: checksum ${m.checksum}, book gives ${sum}` });
    }
    this.checksum = sum;
    this.status = "live";
    this.reason = "";
    this.faults = 0;
    return undefined;
  }

  private checkSnapshot(m: SnapshotMessage): BookFault | undefined {
    const where = `snapshot ${m.symbol} seq ${m.seq}`;
    if (m.priceDecimals < 0 || m.priceDecimals > 18 || m.sizeDecimals < 0 || m.sizeDecimals > 18) {
      return { code: "bad_decimals", message: `${where}: decimals ${m.priceDecimals}/${m.sizeDecimals}` };
    }
    if (m.seq === 0n) return { code: "seq_gap", message: `${where}: seq 0 (sequences start at 1)` };
    const limit = this.depth ?? this.maxLevels;
    if (m.bids.length > limit || m.asks.length > limit) {
      return { code: "too_deep", message: `${where}: ${m.bids.length}/${m.asks.length} levels, limit ${limit}` };
    }
    if (!sorted(m.bids, true) || !sorted(m.asks, false)) {
      return { code: "unsorted_levels", message: `${where}: levels not strictly sorted best first` };
    }
    for (const l of m.bids.concat(m.asks)) {
      if (l.size <= 0n) return { code: "bad_size", message: `${where}: size ${l.size} at price ${l.price}` };
    }
    return this.checkCrossed(where, m.bids, m.asks);
  }

  private checkCrossed(where: string, bids: readonly PriceLevel[], asks: readonly PriceLevel[]): BookFault | undefined {
    const b = bids[0];
    const a = asks[0];
    if (b && a && b.price >= a.price) {
      return { code: "crossed_book", message: `${where}: best bid ${b.price} >= best ask ${a.price}` };
    }
    return undefined;
  }

  /** Applies a delta. Returns a fault (the book becomes `unverified`) on any failed check. */
  applyDelta(m: DeltaMessage): BookFault | undefined {
    this.version++;
    const where = `delta ${m.symbol} seq ${m.seq}`;
    if (this.status !== "live") {
      return this.fail({ code: "unexpected_delta", message: `${where} while the book is ${this.status}` });
    }
    // PROTOCOL §9: prev_seq must be the seq held. On `book`, prev_seq = seq - 1
    // always (§4), so seq is checked too, which also covers 1.0 servers (prev_seq absent).
    if (m.prevSeq !== 0n || this.channel !== "book") {
      if (m.prevSeq !== this.seq) {
        return this.fail({ code: "prev_seq_mismatch", message: `${where}: prev_seq ${m.prevSeq}, held ${this.seq}` });
      }
    }
    if (this.channel === "book" ? m.seq !== this.seq + 1n : m.seq <= this.seq) {
      return this.fail({ code: "seq_gap", message: `${where}: held ${this.seq}` });
    }
    // A side can change at most maxLevels levels' worth plus as many removals:
    // more is hostile, and would cost O(updates × depth) to apply.
    if (m.bids.length + m.asks.length > 4 * this.maxLevels) {
      return this.fail({ code: "too_many_updates", message: `${where}: ${m.bids.length + m.asks.length} updates` });
    }
    for (const u of m.bids.concat(m.asks)) {
      if (u.size < 0n) return this.fail({ code: "bad_size", message: `${where}: size ${u.size} at price ${u.price}` });
    }
    this.applySide(this.bids, m.bids, true);
    this.applySide(this.asks, m.asks, false);
    if (this.depth !== undefined) {
      if (this.bids.length > this.depth) this.bids.length = this.depth;
      if (this.asks.length > this.depth) this.asks.length = this.depth;
    }
    if (this.bids.length > this.maxLevels || this.asks.length > this.maxLevels) {
      return this.fail({ code: "too_deep", message: `${where}: ${this.bids.length}/${this.asks.length} levels` });
    }
    const crossed = this.checkCrossed(where, this.bids, this.asks);
    if (crossed) return this.fail(crossed);
    const sum = bookChecksum(this.bids, this.asks);
    if (sum !== m.checksum) {
      return this.fail({ code: "checksum_mismatch", message: `${where}: checksum ${m.checksum}, book gives ${sum}` });
    }
    this.seq = m.seq;
    this.checksum = sum;
    this.exchangeTsNs = m.exchangeTsNs;
    this.ingestTsNs = m.ingestTsNs;
    this.faults = 0;
    return undefined;
  }

  private applySide(side: PriceLevel[], updates: readonly PriceLevel[], desc: boolean): void {
    for (const u of updates) {
      const i = search(side, u.price, desc);
      if (u.size === 0n) {
        if (i >= 0) side.splice(i, 1);
      } else if (i >= 0) {
        side[i] = { price: u.price, size: u.size };
      } else {
        side.splice(-i - 1, 0, { price: u.price, size: u.size });
      }
    }
  }

  /** Feed gap/down or a lost connection: still correct as of `seq`, no longer current. */
  markStale(reason: string): void {
    if (this.status === "live") this.status = "stale";
    this.reason = reason;
    this.version++;
  }

  /**
   * A snapshot is on its way (slow consumer, resync, resubscribe): deltas are
   * refused until it comes; verified levels stay visible, flagged stale.
   */
  expectSnapshot(reason: string): void {
    if (this.status === "unverified") return; // its fault stays the reason until the snapshot
    if (this.status === "live") this.status = "stale";
    this.reason = reason;
    this.version++;
  }

  /** After a resumed subscription (PROTOCOL §10) the held book carries on from `seq`. */
  resume(): void {
    if (this.status === "stale") {
      this.status = "live";
      this.reason = "";
      this.version++;
    }
  }

  /** Whether the held levels are verified (live or stale): what may be shown and resumed from. */
  get verified(): boolean {
    return this.status === "live" || this.status === "stale";
  }

  private fail(f: BookFault): BookFault {
    this.status = "unverified";
    this.reason = f.code;
    this.bids = [];
    this.asks = [];
    this.faults++;
    this.version++;
    return f;
  }

  /** The current immutable view; the same object until the book changes. */
  getSnapshot(): BookView {
    if (this.view && this.viewVersion === this.version) return this.view;
    const show = this.status === "live" || this.status === "stale";
    this.view = Object.freeze({
      symbol: this.symbol,
      channel: this.channel,
      status: this.status,
      reason: this.reason,
      seq: this.seq,
      epoch: this.epoch,
      bids: show ? Object.freeze(this.bids.slice()) : EMPTY,
      asks: show ? Object.freeze(this.asks.slice()) : EMPTY,
      priceDecimals: this.priceDecimals,
      sizeDecimals: this.sizeDecimals,
      checksum: this.checksum,
      exchangeTsNs: this.exchangeTsNs,
      ingestTsNs: this.ingestTsNs,
    });
    this.viewVersion = this.version;
    return this.view;
  }
}

/** `[price, size]` decimal strings of a view's top `n` levels, for display. */
export function formatLevels(view: BookView, side: "bids" | "asks", n = 10): [string, string][] {
  return view[side].slice(0, n).map((l) => [formatDecimal(l.price, view.priceDecimals), formatDecimal(l.size, view.sizeDecimals)]);
}
