/**
 * Decoding server frames (PROTOCOL §2, §6) into `ServerMessage`s. Pure: no
 * sockets, no clock. Every failure is a thrown `DecodeError`, never a wrong value.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { ServerMessageSchema, Side as PbSide } from "./gen/tickwire_pb.js";
import type { LevelUpdate, Level } from "./gen/tickwire_pb.js";
import { checkDecimals, parseDecimal } from "./decimal.js";
import type { PriceLevel, ServerMessage, Side, Instrument } from "./types.js";

export class DecodeError extends Error {
  override name = "DecodeError";
  /** Set when the frame was readable but names a symbol whose decimals are unknown (JSON deltas, trades). */
  unknownSymbol?: string;
}

/** The decimals of a symbol, needed to read the decimal strings of JSON deltas and trades. */
export type DecimalsOf = (symbol: string) => { priceDecimals: number; sizeDecimals: number } | undefined;

const U32_MAX = 0xffffffff;

function channelName(c: string): string {
  return c === "" ? "book" : c;
}

function idNumber(id: bigint): number {
  return id <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(id) : -1;
}

/** Decodes one binary frame holding a protobuf `ServerMessage`. */
export function decodeProto(bytes: Uint8Array): ServerMessage {
  let m;
  try {
    m = fromBinary(ServerMessageSchema, bytes);
  } catch (e) {
    throw new DecodeError(`undecodable protobuf frame: ${(e as Error).message}`);
  }
  const b = m.body;
  const lv = (l: Level): PriceLevel => ({ price: l.price, size: l.size });
  switch (b.case) {
    case "snapshot": {
      const s = b.value;
      return {
        type: "snapshot", symbol: s.symbol, channel: channelName(s.channel), seq: s.seq, epoch: s.epoch,
        bids: s.bids.map(lv), asks: s.asks.map(lv), priceDecimals: s.priceDecimals, sizeDecimals: s.sizeDecimals,
        checksum: s.checksum, exchangeTsNs: s.exchangeTsNs, ingestTsNs: s.ingestTsNs,
      };
    }
    case "delta": {
      const d = b.value;
      const bids: PriceLevel[] = [];
      const asks: PriceLevel[] = [];
      d.updates.forEach((u: LevelUpdate) => {
        if (u.side === PbSide.BID) bids.push({ price: u.price, size: u.size });
        else if (u.side === PbSide.ASK) asks.push({ price: u.price, size: u.size });
        else throw new DecodeError(`delta ${d.symbol} seq ${d.seq}: level update without a side`);
      });
      return {
        type: "delta", symbol: d.symbol, channel: channelName(d.channel), seq: d.seq, prevSeq: d.prevSeq,
        bids, asks, checksum: d.checksum, exchangeTsNs: d.exchangeTsNs, ingestTsNs: d.ingestTsNs,
      };
    }
    case "trade": {
      const t = b.value;
      const aggressor: Side = t.aggressor === PbSide.BID ? "bid" : t.aggressor === PbSide.ASK ? "ask" : "";
      return {
        type: "trade", symbol: t.symbol, seq: t.seq, price: t.price, size: t.size, aggressor,
        exchangeTsNs: t.exchangeTsNs, ingestTsNs: t.ingestTsNs, tradeId: t.tradeId,
      };
    }
    case "subscribed": {
      const s = b.value;
      return {
        type: "subscribed", id: idNumber(s.id), symbols: s.symbols, channels: s.channels, resumed: s.resumed,
        instruments: s.instruments.map((i) => ({
          symbol: i.symbol, priceDecimals: i.priceDecimals, sizeDecimals: i.sizeDecimals, epoch: i.epoch,
        })),
      };
    }
    case "unsubscribed":
      return { type: "unsubscribed", id: idNumber(b.value.id), symbols: b.value.symbols, channels: b.value.channels };
    case "error":
      return { type: "error", id: idNumber(b.value.id), code: b.value.code, message: b.value.message };
    case "stale":
      return { type: "stale", symbol: b.value.symbol, dropped: b.value.dropped, reason: b.value.reason };
    case "authenticated":
      return { type: "authenticated", id: idNumber(b.value.id), sub: b.value.sub, expiresAtNs: b.value.expiresAtNs };
    default:
      throw new DecodeError("protobuf ServerMessage with an empty or unknown body");
  }
}

// JSON numbers above 2^53 lose precision in JSON.parse: the 64-bit integer
// fields are quoted before parsing and read back as bigints. A `"key":digits`
// match cannot start inside a JSON string (its quotes would be escaped).
const BIG_FIELDS = /"(seq|prev_seq|epoch|exchange_ts_ns|ingest_ts_ns|expires_at_ns|dropped|id)":(-?\d+)/g;

type Json = Record<string, unknown>;

function str(o: Json, k: string, optional = false): string {
  const v = o[k];
  if (typeof v === "string") return v;
  if (v === undefined && optional) return "";
  throw new DecodeError(`field ${k}: expected a string`);
}

function big(o: Json, k: string, optional = false): bigint {
  const v = o[k];
  if (typeof v === "string" && /^\d+$/.test(v)) {
    const n = BigInt(v);
    if (n >= 1n << 64n) throw new DecodeError(`field ${k}: over 64 bits`);
    return n;
  }
  if (v === undefined && optional) return 0n;
  throw new DecodeError(`field ${k}: expected an unsigned integer`);
}

function int(o: Json, k: string, max: number, optional = false): number {
  const v = o[k];
  if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max) return v;
  if (v === undefined && optional) return 0;
  throw new DecodeError(`field ${k}: expected an integer 0..${max}`);
}

function strings(o: Json, k: string, optional = false): string[] {
  const v = o[k];
  if (v === undefined && optional) return [];
  if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v as string[];
  throw new DecodeError(`field ${k}: expected an array of strings`);
}

function levels(o: Json, k: string, pd: number, sd: number): PriceLevel[] {
  const v = o[k];
  if (!Array.isArray(v)) throw new DecodeError(`field ${k}: expected an array of [price, size]`);
  return v.map((pair) => {
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string" || typeof pair[1] !== "string") {
      throw new DecodeError(`field ${k}: expected [price, size] decimal strings`);
    }
    try {
      return { price: parseDecimal(pair[0], pd), size: parseDecimal(pair[1], sd, false) };
    } catch (e) {
      throw new DecodeError(`field ${k}: ${(e as Error).message}`);
    }
  });
}

function decimalsOf(o: Json, decimals: DecimalsOf, what: string) {
  const symbol = str(o, "symbol");
  const d = decimals(symbol);
  if (!d) {
    const e = new DecodeError(`${what} for ${symbol}, whose decimals are unknown`);
    e.unknownSymbol = symbol;
    throw e;
  }
  return d;
}

/** Decodes one JSON text frame (PROTOCOL §6). */
export function decodeJson(text: string, decimals: DecimalsOf): ServerMessage {
  let o: unknown;
  try {
    o = JSON.parse(text.replace(BIG_FIELDS, '"$1":"$2"'));
  } catch (e) {
    throw new DecodeError(`undecodable JSON frame: ${(e as Error).message}`);
  }
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw new DecodeError("JSON frame is not an object");
  const j = o as Json;
  const type = j["type"];
  switch (type) {
    case "snapshot": {
      const pd = int(j, "price_decimals", 18);
      const sd = int(j, "size_decimals", 18);
      checkDecimals(pd);
      return {
        type, symbol: str(j, "symbol"), channel: channelName(str(j, "channel", true)), seq: big(j, "seq"),
        epoch: big(j, "epoch", true), bids: levels(j, "bids", pd, sd), asks: levels(j, "asks", pd, sd),
        priceDecimals: pd, sizeDecimals: sd, checksum: int(j, "checksum", U32_MAX),
        exchangeTsNs: big(j, "exchange_ts_ns", true), ingestTsNs: big(j, "ingest_ts_ns", true),
      };
    }
    case "delta": {
      const d = decimalsOf(j, decimals, "delta");
      return {
        type, symbol: str(j, "symbol"), channel: channelName(str(j, "channel", true)), seq: big(j, "seq"),
        prevSeq: big(j, "prev_seq", true), bids: levels(j, "bids", d.priceDecimals, d.sizeDecimals),
        asks: levels(j, "asks", d.priceDecimals, d.sizeDecimals), checksum: int(j, "checksum", U32_MAX),
        exchangeTsNs: big(j, "exchange_ts_ns", true), ingestTsNs: big(j, "ingest_ts_ns", true),
      };
    }
    case "trade": {
      const d = decimalsOf(j, decimals, "trade");
      const ag = str(j, "aggressor", true);
      if (ag !== "bid" && ag !== "ask" && ag !== "") throw new DecodeError(`trade aggressor ${ag}`);
      let price: bigint, size: bigint;
      try {
        price = parseDecimal(str(j, "price"), d.priceDecimals);
        size = parseDecimal(str(j, "size"), d.sizeDecimals, false);
      } catch (e) {
        throw new DecodeError(`trade: ${(e as Error).message}`);
      }
      return {
        type, symbol: str(j, "symbol"), seq: big(j, "seq"), price, size, aggressor: ag,
        exchangeTsNs: big(j, "exchange_ts_ns", true), ingestTsNs: big(j, "ingest_ts_ns", true),
        tradeId: str(j, "trade_id", true),
      };
    }
    case "subscribed": {
      const inst = j["instruments"];
      if (!Array.isArray(inst)) throw new DecodeError("subscribed: instruments is not an array");
      const instruments: Instrument[] = inst.map((i: unknown) => {
        if (typeof i !== "object" || i === null) throw new DecodeError("subscribed: bad instrument");
        const r = i as Json;
        return {
          symbol: str(r, "symbol"), priceDecimals: int(r, "price_decimals", 18),
          sizeDecimals: int(r, "size_decimals", 18), epoch: big(r, "epoch", true),
        };
      });
      return {
        type, id: idNumber(big(j, "id")), symbols: strings(j, "symbols"), channels: strings(j, "channels"),
        instruments, resumed: strings(j, "resumed", true),
      };
    }
    case "unsubscribed":
      return { type, id: idNumber(big(j, "id")), symbols: strings(j, "symbols"), channels: strings(j, "channels") };
    case "error":
      return { type, id: idNumber(big(j, "id", true)), code: str(j, "code"), message: str(j, "message", true) };
    case "stale":
      return { type, symbol: str(j, "symbol"), dropped: big(j, "dropped", true), reason: str(j, "reason") };
    case "authenticated":
      return { type, id: idNumber(big(j, "id")), sub: str(j, "sub", true), expiresAtNs: big(j, "expires_at_ns") };
    default:
      throw new DecodeError(`JSON frame with unknown type ${JSON.stringify(type)}`);
  }
}
