/**
 * CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as `crc32fast` and
 * zlib compute it, and the book checksum of PROTOCOL §5 on top of it.
 */
import type { PriceLevel } from "./types.js";

const TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Continues a CRC-32 over `bytes` (start with 0). */
export function crc32Update(crc: number, bytes: Uint8Array): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = TABLE[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 of `bytes`; `crc32(new TextEncoder().encode("123456789")) === 0xCBF43926`. */
export function crc32(bytes: Uint8Array): number {
  return crc32Update(0, bytes);
}

/** How many levels per side the checksum covers (PROTOCOL §5). */
export const CHECKSUM_LEVELS = 10;

/**
 * PROTOCOL §5: CRC-32 over the top 10 bids (best first) then the top 10 asks,
 * each level as its price then its size, each an int64 little-endian.
 * An empty book gives 0 (the CRC of zero bytes).
 */
export function bookChecksum(bids: readonly PriceLevel[], asks: readonly PriceLevel[]): number {
  const nb = Math.min(bids.length, CHECKSUM_LEVELS);
  const na = Math.min(asks.length, CHECKSUM_LEVELS);
  const buf = new Uint8Array((nb + na) * 16);
  const view = new DataView(buf.buffer);
  let off = 0;
  for (const side of [bids.slice(0, nb), asks.slice(0, na)]) {
    for (const l of side) {
      view.setBigInt64(off, l.price, true);
      view.setBigInt64(off + 8, l.size, true);
      off += 16;
    }
  }
  return crc32(buf);
}
