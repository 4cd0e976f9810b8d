/**
 * tickwire TypeScript SDK: a WebSocket client for tickwire (../../../shared/PROTOCOL.md)
 * that only ever shows order books it has verified.
 */
export { TickwireClient, TickwireError } from "./client.js";
export type {
  ClientOptions, ClientEvents, ClientError, ClientSnapshot, ConnectionStatus, Encoding, Store,
  TokenSource, TradeEvent, WebSocketConstructor, WebSocketLike,
} from "./client.js";
export { Book, channelDepth, formatLevels, isBookChannel } from "./book.js";
export type { BookFault, BookOptions, BookStatus, BookView } from "./book.js";
export { bookChecksum, crc32, crc32Update, CHECKSUM_LEVELS } from "./crc32.js";
export { DecimalError, formatDecimal, parseDecimal, toNumber, INT64_MAX, INT64_MIN, MAX_DECIMALS } from "./decimal.js";
export { decodeJson, decodeProto, DecodeError } from "./codec.js";
export type { DecimalsOf } from "./codec.js";
export type * from "./types.js";
