/**
 * Fixed-point numbers (PROTOCOL §1): a value is `mantissa × 10^-decimals`, the
 * mantissa an int64 held as a `bigint`, decimals 0 to 18. Never floats.
 */

export const INT64_MIN = -(1n << 63n);
export const INT64_MAX = (1n << 63n) - 1n;
export const MAX_DECIMALS = 18;

const DECIMAL_RE = /^(-?)(\d+)(?:\.(\d+))?$/;

/** Thrown for a decimal string or mantissa that breaks PROTOCOL §1. */
export class DecimalError extends Error {
  override name = "DecimalError";
}

export function checkDecimals(decimals: number): void {
  if (!Number.isInteger(decimals) || decimals < 0 || decimals > MAX_DECIMALS) {
    throw new DecimalError(`decimals ${decimals} outside 0..${MAX_DECIMALS}`);
  }
}

/**
 * Parses a PROTOCOL §1 decimal string into its mantissa at `decimals`:
 * `parseDecimal("30000.5", 2) === 3000050n`. Extra fractional digits are
 * accepted only when they are zeros (`"1.2500"` at 2), never rounded.
 */
export function parseDecimal(text: string, decimals: number, allowNegative = true): bigint {
  checkDecimals(decimals);
  const m = DECIMAL_RE.exec(text);
  if (!m) throw new DecimalError(`not a decimal string: ${JSON.stringify(text).slice(0, 40)}`);
  const [, sign, int, frac = ""] = m;
  if (sign && !allowNegative) throw new DecimalError(`negative value not allowed: ${text}`);
  if (frac.length > decimals && /[^0]/.test(frac.slice(decimals))) {
    throw new DecimalError(`${text} has more than ${decimals} decimals`);
  }
  const digits = int! + frac.slice(0, decimals).padEnd(decimals, "0");
  const v = sign ? -BigInt(digits) : BigInt(digits);
  if (v < INT64_MIN || v > INT64_MAX) throw new DecimalError(`${text} does not fit an int64 mantissa`);
  return v;
}

/** Formats a mantissa with exactly `decimals` fractional digits: `formatDecimal(3000050n, 2) === "30000.50"`. */
export function formatDecimal(mantissa: bigint, decimals: number): string {
  checkDecimals(decimals);
  const neg = mantissa < 0n;
  const s = (neg ? -mantissa : mantissa).toString().padStart(decimals + 1, "0");
  const int = s.slice(0, s.length - decimals);
  const frac = s.slice(s.length - decimals);
  return (neg ? "-" : "") + (decimals ? `${int}.${frac}` : int);
}

/** The nearest JavaScript number, for charts and arithmetic that tolerates rounding. */
export function toNumber(mantissa: bigint, decimals: number): number {
  return Number(formatDecimal(mantissa, decimals));
}
