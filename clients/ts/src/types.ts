/**
 * The server messages of PROTOCOL §2/§6, decoded from either encoding into one
 * shape: prices and sizes as int64 mantissas (`bigint`), sequences, epochs and
 * timestamps as `bigint` (they can exceed 2^53), checksums as numbers.
 */

/** One price level: `size > 0` in a book; in a delta `size === 0n` removes the level. */
export interface PriceLevel {
  readonly price: bigint;
  readonly size: bigint;
}

export type Side = "bid" | "ask" | "";

export interface SnapshotMessage {
  type: "snapshot";
  symbol: string;
  /** PROTOCOL §9 channel name; "" in protobuf is normalised to "book". */
  channel: string;
  seq: bigint;
  epoch: bigint;
  bids: PriceLevel[];
  asks: PriceLevel[];
  priceDecimals: number;
  sizeDecimals: number;
  checksum: number;
  exchangeTsNs: bigint;
  ingestTsNs: bigint;
}

export interface DeltaMessage {
  type: "delta";
  symbol: string;
  channel: string;
  seq: bigint;
  /** PROTOCOL §9; 0n when the server predates 1.1 (then `book` checks seq = held + 1). */
  prevSeq: bigint;
  /** Bid updates in message order. */
  bids: PriceLevel[];
  /** Ask updates in message order. */
  asks: PriceLevel[];
  checksum: number;
  exchangeTsNs: bigint;
  ingestTsNs: bigint;
}

export interface TradeMessage {
  type: "trade";
  symbol: string;
  seq: bigint;
  price: bigint;
  size: bigint;
  aggressor: Side;
  exchangeTsNs: bigint;
  ingestTsNs: bigint;
  tradeId: string;
}

export interface Instrument {
  symbol: string;
  priceDecimals: number;
  sizeDecimals: number;
  epoch: bigint;
}

export interface SubscribedMessage {
  type: "subscribed";
  id: number;
  symbols: string[];
  channels: string[];
  instruments: Instrument[];
  /** PROTOCOL §10: "SYMBOL:channel" entries resumed without a snapshot. */
  resumed: string[];
}

export interface UnsubscribedMessage {
  type: "unsubscribed";
  id: number;
  symbols: string[];
  channels: string[];
}

export interface ErrorMessage {
  type: "error";
  id: number;
  code: string;
  message: string;
}

export interface StaleMessage {
  type: "stale";
  symbol: string;
  dropped: bigint;
  reason: string;
}

export interface AuthenticatedMessage {
  type: "authenticated";
  id: number;
  sub: string;
  expiresAtNs: bigint;
}

export type ServerMessage =
  | SnapshotMessage
  | DeltaMessage
  | TradeMessage
  | SubscribedMessage
  | UnsubscribedMessage
  | ErrorMessage
  | StaleMessage
  | AuthenticatedMessage;
