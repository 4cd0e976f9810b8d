#!/usr/bin/env python3
# Usage: tickwire demo --symbols 100 --rate 5000 --listen 127.0.0.1:PORT, then
#   python3 tuning/bench-dashboard.py 127.0.0.1:PORT book|book.10@100ms CLIENTS SECONDS
# (needs `pip install websockets`). See tuning/CAPACITY.md §10.
# Dashboard-style load: N clients, each on 5 random symbols of the demo's 100,
# on CHANNEL; counts delivered messages and bytes for SECONDS.
import asyncio, json, random, sys, time, urllib.request
import websockets
addr, channel, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
syms = [s["symbol"] for s in json.load(urllib.request.urlopen(f"http://{addr}/symbols"))["symbols"]]
msgs = 0; nbytes = 0; deltas = 0
async def client(i):
    global msgs, nbytes, deltas
    rnd = random.Random(i)
    mine = rnd.sample(syms, 5)
    async with websockets.connect(f"ws://{addr}/ws?encoding=json", max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "symbols": mine, "channels": [channel], "id": 1}))
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0: return
            try:
                m = await asyncio.wait_for(ws.recv(), left)
            except asyncio.TimeoutError:
                return
            msgs += 1; nbytes += len(m)
            if m.startswith('{"type":"delta"'): deltas += 1
async def main():
    await asyncio.gather(*(client(i) for i in range(n)))
asyncio.run(main())
print(f"{channel}: clients {n} x 5 of {len(syms)} symbols, {seconds:.0f}s: messages {msgs} ({msgs/seconds:.0f}/s), deltas {deltas}, bytes {nbytes} ({nbytes/seconds/1e6:.2f} MB/s)")
