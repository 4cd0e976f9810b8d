"""Test helpers: a fake tickwire server (in-process `websockets.serve` on
127.0.0.1, port 0) that a test scripts message by message, and the real
engine (spawned from $TICKWIRE_BIN or <repo>/target/release/tickwire, ports
read from its stdout, killed by PID)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from tickwire_client import checksum
from tickwire_client import tickwire_pb2 as pb

REPO = Path(__file__).resolve().parents[3]
WAIT_S = 10.0


async def until(pred, timeout=WAIT_S, what="condition"):
    """Polls `pred()` every 10 ms; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ fake server


def fmt(mant: int, dec: int) -> str:
    """§1 output: exactly `dec` fractional digits."""
    neg = mant < 0
    s = str(abs(mant)).rjust(dec + 1, "0")
    s = s if dec == 0 else f"{s[:-dec]}.{s[-dec:]}"
    return ("-" if neg else "") + s


class FakeConn:
    def __init__(self, ws, encoding: str, decimals: dict):
        self.ws = ws
        self.encoding = encoding
        self.decimals = decimals  # symbol -> (price, size), for JSON rendering
        self.requests: asyncio.Queue = asyncio.Queue()

    async def request(self, timeout=WAIT_S) -> dict:
        return await asyncio.wait_for(self.requests.get(), timeout)

    async def send_raw(self, frame):
        await self.ws.send(frame)

    async def send(self, kind: str, **f):
        """Sends one ServerMessage in the connection's encoding. Levels as raw
        (price, size) ints; `updates` as (side, price, size) with side "bid"/"ask"."""
        if self.encoding == "proto":
            await self.ws.send(_proto(kind, f).SerializeToString())
        else:
            await self.ws.send(json.dumps(_json(kind, f, self.decimals)))

    async def subscribed(self, req: dict, instruments=None, resumed=(), epoch=1):
        ins = instruments or [(s, *self.decimals.get(s, (2, 4))) for s in req["symbols"]]
        await self.send(
            "subscribed",
            id=req.get("id", 0),
            symbols=req["symbols"],
            channels=req.get("channels", ["book"]),
            instruments=[dict(symbol=s, price_decimals=p, size_decimals=z, epoch=epoch) for s, p, z in ins],
            resumed=list(resumed),
        )

    async def snapshot(self, symbol, seq, bids, asks, channel="book", epoch=1, csum=None):
        p, z = self.decimals.get(symbol, (2, 4))
        await self.send(
            "snapshot", symbol=symbol, seq=seq, bids=bids, asks=asks, price_decimals=p, size_decimals=z,
            checksum=checksum(bids[:10], asks[:10]) if csum is None else csum, epoch=epoch, channel=channel,
        )

    async def delta(self, symbol, seq, updates, book, prev_seq=None, channel="book", csum=None):
        """Applies `updates` to `book` ({"bid": {}, "ask": {}}) and sends them
        with the resulting checksum (unless `csum` is given)."""
        for side, price, size in updates:
            if size == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = size
        if csum is None:
            csum = checksum(sorted(book["bid"].items(), reverse=True)[:10], sorted(book["ask"].items())[:10])
        await self.send(
            "delta", symbol=symbol, seq=seq, prev_seq=seq - 1 if prev_seq is None else prev_seq,
            updates=updates, checksum=csum, channel=channel,
        )


def _proto(kind, f) -> pb.ServerMessage:
    msg = pb.ServerMessage()
    body = getattr(msg, kind)
    for k, v in f.items():
        if k in ("bids", "asks"):
            getattr(body, k).extend(pb.Level(price=p, size=s) for p, s in v)
        elif k == "updates":
            body.updates.extend(pb.LevelUpdate(side=pb.BID if sd == "bid" else pb.ASK, price=p, size=s) for sd, p, s in v)
        elif k == "instruments":
            body.instruments.extend(pb.Instrument(**i) for i in v)
        elif k in ("symbols", "channels", "resumed"):
            getattr(body, k).extend(v)
        elif k == "aggressor":
            body.aggressor = {"bid": pb.BID, "ask": pb.ASK}.get(v, pb.SIDE_UNSPECIFIED)
        elif k == "channel" and v == "book":
            body.channel = ""
        else:
            setattr(body, k, v)
    if kind not in ("error",):  # make sure the oneof is set even with no fields
        msg.WhichOneof("body") or getattr(msg, kind).SetInParent()
    return msg


def _json(kind, f, decimals) -> dict:
    out = {"type": kind}
    sym = f.get("symbol")
    if kind == "snapshot":
        d = (f["price_decimals"], f["size_decimals"])
    else:
        d = decimals.get(sym, (2, 4))
    for k, v in f.items():
        if k in ("bids", "asks"):
            out[k] = [[fmt(p, d[0]), fmt(s, d[1])] for p, s in v]
        elif k == "updates":
            out["bids"] = [[fmt(p, d[0]), fmt(s, d[1])] for sd, p, s in v if sd == "bid"]
            out["asks"] = [[fmt(p, d[0]), fmt(s, d[1])] for sd, p, s in v if sd == "ask"]
        elif kind == "trade" and k in ("price", "size"):
            out[k] = fmt(v, d[0] if k == "price" else d[1])
        else:
            out[k] = v
    return out


class FakeServer:
    def __init__(self, encoding: str, decimals=None):
        self.encoding = encoding
        self.decimals = decimals or {}
        self.conns: asyncio.Queue = asyncio.Queue()
        self.count = 0

    async def __aenter__(self):
        self._server = await serve(
            self._handler, "127.0.0.1", 0, subprotocols=["tickwire.v1.proto", "tickwire.v1.json"]
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc):
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handler(self, ws):
        self.count += 1
        conn = FakeConn(ws, self.encoding, self.decimals)
        await self.conns.put(conn)
        try:
            async for frame in ws:
                await conn.requests.put(json.loads(frame))
        except Exception:  # noqa: BLE001 - the client went away
            pass

    async def accept(self, timeout=WAIT_S) -> FakeConn:
        return await asyncio.wait_for(self.conns.get(), timeout)


# ------------------------------------------------------------------ the real engine


class Engine:
    def __init__(self, args=(), listen="127.0.0.1:0", ingest_json="127.0.0.1:0"):
        binary = os.environ.get("TICKWIRE_BIN") or str(REPO / "target" / "release" / "tickwire")
        if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
            pytest.fail(
                f"tickwire binary not found at {binary}: build it with `cargo build --release` "
                "or set TICKWIRE_BIN", pytrace=False,
            )
        cmd = [binary, "serve", "--listen", listen, "--ingest", "127.0.0.1:0", "--ingest-json", ingest_json,
               "--workers", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines = []
        got = threading.Event()

        def read():
            for line in self.proc.stdout:
                lines.append(line.strip())
                if line.startswith("ingest "):
                    got.set()
            got.set()

        threading.Thread(target=read, daemon=True).start()
        if not got.wait(WAIT_S) or not any(l.startswith("ingest ") for l in lines):
            self.kill()
            raise AssertionError(f"engine did not print its addresses within {WAIT_S} s: {lines}")
        for line in lines:
            if line.startswith("listening on "):
                self.ws_addr = line.split()[-1]
            elif line.startswith("ingest "):
                parts = line.split()  # ingest protobuf ADDR json ADDR
                self.ingest_proto = parts[2]
                self.ingest_json = parts[4]
        self.url = f"ws://{self.ws_addr}/ws"

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


@pytest.fixture
def engine_factory():
    started = []

    def start(*args, **kw):
        e = Engine(*args, **kw)
        started.append(e)
        return e

    yield start
    for e in started:
        e.kill()


class Feed:
    """A feed handler on the JSON-lines ingest (PROTOCOL §3)."""

    def __init__(self, addr: str):
        self.addr = addr

    async def __aenter__(self):
        host, port = self.addr.rsplit(":", 1)
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), WAIT_S)
        await self.line({"type": "hello", "feed_id": "pytest"})
        return self

    async def __aexit__(self, *exc):
        self.writer.close()

    async def line(self, obj: dict):
        self.writer.write((json.dumps(obj) + "\n").encode())
        await self.writer.drain()
