// Example components: an order book and recent trades, on the Zustand store of
// ./store.ts, plus the same book read straight from the SDK with React's
// useSyncExternalStore (no state library at all).
import { useEffect, useSyncExternalStore } from "react";
import { formatDecimal, formatLevels } from "@tickwire/client";
import type { BookView, TickwireClient } from "@tickwire/client";
import { DEFAULT_CHANNEL, useBook, useStatus, useTrades } from "./store.js";
import type { MarketStore } from "./store.js";

function Levels({ view, side }: { view: BookView; side: "bids" | "asks" }) {
  return (
    <table className={side}>
      <tbody>
        {formatLevels(view, side, 10).map(([price, size]) => (
          <tr key={price}>
            <td>{price}</td>
            <td>{size}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** The card's badge: verified (live, or stale but as verified at `seq`) or not. */
function Verified({ view }: { view: BookView | undefined }) {
  const verified = view?.status === "live" || view?.status === "stale";
  const label = verified ? `verified${view!.status === "stale" ? " (stale)" : ""}` : view?.status === "unverified" ? "unverified" : "syncing";
  return <span className={`badge ${verified ? "verified" : "unverified"}`}>{label}</span>;
}

export function OrderBook({ store, symbol, channel = DEFAULT_CHANNEL }: { store: MarketStore; symbol: string; channel?: string }) {
  const status = useStatus(store);
  const book = useBook(store, symbol);
  const trades = useTrades(store, symbol) ?? [];
  useEffect(() => {
    void store.getState().watch(symbol, channel);
    return () => void store.getState().unwatch(symbol);
  }, [store, symbol, channel]);

  const verified = book?.status === "live" || book?.status === "stale";
  return (
    <section className="card" data-symbol={symbol} data-status={book?.status ?? "none"} data-verified={String(verified)}>
      <h2>
        {symbol} <Verified view={book} />
      </h2>
      {!book ? (
        <p>connection: {status}</p>
      ) : (
        <>
          <small>
            {book.channel} seq {book.seq.toString()} · {book.status}
            {book.reason && ` (${book.reason})`}
          </small>
          {verified ? (
            <div className="levels" style={{ opacity: book.status === "stale" ? 0.5 : 1 }}>
              <Levels view={book} side="bids" />
              <Levels view={book} side="asks" />
            </div>
          ) : (
            <p>waiting for a verified snapshot…</p>
          )}
        </>
      )}
      <ul className="trades">
        {trades.slice(0, 10).map((t) => (
          <li key={t.seq.toString()}>
            {t.aggressor} {formatDecimal(t.size, t.sizeDecimals)} @ {formatDecimal(t.price, t.priceDecimals)}
          </li>
        ))}
      </ul>
    </section>
  );
}

/** Without Zustand: React's own hook on the SDK store, selecting one book. */
export function BestBid({ client, symbol }: { client: TickwireClient; symbol: string }) {
  const book = useSyncExternalStore(client.store.subscribe, () => client.store.getSnapshot().books[symbol]);
  const best = book?.status === "live" ? book.bids[0] : undefined;
  return <span>{best ? formatDecimal(best.price, book!.priceDecimals) : "–"}</span>;
}
