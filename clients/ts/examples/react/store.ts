// A Zustand store fed by the SDK's framework-neutral store: one `subscribe`
// copies the client's immutable snapshot in, so selectors re-render only the
// components whose slice (a book, a trade list) changed identity.
import { createStore } from "zustand/vanilla";
import { useStore } from "zustand";
import { TickwireClient } from "@tickwire/client";
import type { BookView, ClientSnapshot, ConnectionStatus, TradeEvent } from "@tickwire/client";

/** Top 10 levels per side, at most one update per 100 ms (docs/protocol.md §9). */
export const DEFAULT_CHANNEL = "book.10@100ms";

export interface MarketState {
  client: TickwireClient;
  market: ClientSnapshot;
  watch(symbol: string, channel?: string): Promise<void>;
  unwatch(symbol: string): Promise<void>;
}

export function createMarketStore(url: string, token?: () => Promise<string>) {
  const client = new TickwireClient({ url, token, encoding: "proto" });
  const store = createStore<MarketState>()(() => ({
    client,
    market: client.store.getSnapshot(),
    watch: async (symbol, channel = DEFAULT_CHANNEL) => {
      await client.subscribe([symbol], [channel, "trades"]);
    },
    unwatch: async (symbol) => {
      // "book" ends whichever book channel the symbol holds (§9).
      await client.unsubscribe([symbol], ["book", "trades"]);
    },
  }));
  client.store.subscribe(() => store.setState({ market: client.store.getSnapshot() }));
  void client.connect();
  return store;
}

export type MarketStore = ReturnType<typeof createMarketStore>;

export const useStatus = (s: MarketStore): ConnectionStatus => useStore(s, (st) => st.market.status);
export const useBook = (s: MarketStore, symbol: string): BookView | undefined =>
  useStore(s, (st) => st.market.books[symbol]);
export const useTrades = (s: MarketStore, symbol: string): readonly TradeEvent[] | undefined =>
  useStore(s, (st) => st.market.trades[symbol]);
