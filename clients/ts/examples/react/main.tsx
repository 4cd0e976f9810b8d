// The runnable page: one Zustand store (./store.ts) on a TickwireClient that
// connects to ws(s)://<this page's host>/ws (the Vite dev/preview proxy sends
// it on to the engine), and one <OrderBook> per symbol the engine lists at
// GET /symbols (the first MAX_CARDS), on the default channel book.10@100ms.
import { useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { OrderBook } from "./OrderBook.js";
import { createMarketStore, DEFAULT_CHANNEL, useStatus } from "./store.js";

const MAX_CARDS = 3;
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const store = createMarketStore(wsUrl);

async function listSymbols(): Promise<string[]> {
  const res = await fetch("/symbols");
  if (!res.ok) throw new Error(`GET /symbols: HTTP ${res.status}`);
  const body = (await res.json()) as { symbols: { symbol: string }[] };
  return body.symbols.map((s) => s.symbol).slice(0, MAX_CARDS);
}

function App() {
  const status = useStatus(store);
  const [symbols, setSymbols] = useState<string[] | undefined>();
  const [problem, setProblem] = useState<string | undefined>();
  useEffect(() => {
    listSymbols().then(setSymbols, (e: Error) => setProblem(e.message));
  }, []);
  return (
    <main>
      <h1>
        tickwire <small>{wsUrl} · connection {status} · {DEFAULT_CHANNEL}</small>
      </h1>
      {problem && <p className="problem">Cannot list symbols ({problem}): is the engine running at the proxy's TICKWIRE_URL?</p>}
      {!symbols && !problem && <p>loading symbols…</p>}
      <div className="cards">
        {symbols?.map((s) => <OrderBook key={s} store={store} symbol={s} />)}
      </div>
    </main>
  );
}

createRoot(document.getElementById("root")!).render(<App />);
