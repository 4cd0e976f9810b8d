// Prints the top of a book and each trade, verified, from Node 20:
//   npm run build && node examples/node/watch.mjs ws://127.0.0.1:8080/ws BTC-USD [json]
// With --auth: TICKWIRE_TOKEN=<jwt> node examples/node/watch.mjs ...
import { WebSocket } from "ws";
import { TickwireClient, formatDecimal } from "../../dist/index.js";

const [url = "ws://127.0.0.1:8080/ws", symbol = "BTC-USD", encoding = "proto"] = process.argv.slice(2);
const client = new TickwireClient({ url, WebSocket, encoding, token: process.env.TICKWIRE_TOKEN });
const px = (l, d) => (l ? formatDecimal(l.price, d) : "-");

client.on("status", ({ status }) => console.log(`[${status}]`));
client.on("error", (e) => console.warn(`! ${e.code}${e.symbol ? ` ${e.symbol}` : ""}: ${e.message}`));
client.on("stale", (s) => console.warn(`~ ${s.symbol} stale: ${s.reason}`));
client.on("update", (b) => {
  if (b.status === "live") console.log(`${b.symbol} #${b.seq} ${px(b.bids[0], b.priceDecimals)} / ${px(b.asks[0], b.priceDecimals)}`);
});
client.on("trade", (t) =>
  console.log(`${t.symbol} trade ${t.aggressor} ${formatDecimal(t.size, t.sizeDecimals)} @ ${formatDecimal(t.price, t.priceDecimals)}`),
);
process.on("SIGINT", () => {
  client.close();
  process.exit(0);
});

await client.connect();
await client.subscribe([symbol], ["book", "trades"]);
