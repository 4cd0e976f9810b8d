// The checked-in browser bundle is self-contained (no imports) and works: it
// decodes protobuf (the bundled @bufbuild/protobuf) and verifies a book.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import { WebSocket } from "ws";
import { ServerMessageSchema } from "../dist/gen/tickwire_pb.js";
import { fakeServer, jsonSubscribed, L, waitFor } from "./helpers.mjs";

const path = new URL("../dist/tickwire.browser.js", import.meta.url);

test("the bundle imports nothing", () => {
  const src = readFileSync(path, "utf8");
  // Static imports and re-exports (esbuild puts them at statement starts), dynamic imports, require.
  assert.doesNotMatch(src, /(^|[;\n])\s*(import|export)\s*[\w{*][^;]*?from\s*["']/);
  assert.doesNotMatch(src, /\bimport\s*\(\s*["'`]|\brequire\s*\(\s*["'`]/);
  assert.match(src, /export\s*\{[^}]*\bas TickwireClient\b/);
});

test("the bundle runs a client over protobuf", async (t) => {
  const sdk = await import(path.href);
  assert.equal(sdk.crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  const bids = [L(9999, 5)];
  const asks = [L(10001, 3)];
  const server = await fakeServer((req, conn) => {
    if (req.op !== "subscribe") return;
    conn.send(jsonSubscribed(req));
    const snap = create(ServerMessageSchema, {
      body: { case: "snapshot", value: { symbol: "X", seq: 3n, bids, asks, priceDecimals: 2, sizeDecimals: 0,
        checksum: sdk.bookChecksum(bids, asks), epoch: 1n } },
    });
    conn.ws.send(toBinary(ServerMessageSchema, snap), { binary: true });
  });
  const client = new sdk.TickwireClient({ url: server.url, WebSocket });
  t.after(async () => {
    client.close();
    await server.close();
  });
  await client.connect();
  await client.subscribe(["X"]);
  await waitFor(() => client.book("X")?.status === "live", "a verified book");
  assert.deepEqual(client.book("X").bids, bids);
  assert.equal(sdk.formatLevels(client.book("X"), "asks")[0][0], "100.01");
});
