"""The client against the real engine (binary from $TICKWIRE_BIN or
<repo>/target/release/tickwire; the test fails, never skips, without it).
The test is the feed handler: it pushes JSON lines to the ingest port and
keeps its own reference book; the client's book must equal it, level for
level, once caught up."""

import asyncio
import random
import time
from decimal import Decimal

import jwt
import pytest

from conftest import WAIT_S, Feed, fmt, until
from tickwire_client import Client, TickwireError, channel_depth

PD, SD = 2, 4  # price and size decimals of the test symbols


class RefBook:
    """The feed's own book and sequence (PROTOCOL §3)."""

    def __init__(self, symbol, rng, depth=30):
        self.symbol = symbol
        self.rng = rng
        self.fseq = 100
        self.bid = {9999 - 7 * i: rng.randint(1, 10**6) for i in range(depth)}
        self.ask = {10001 + 7 * i: rng.randint(1, 10**6) for i in range(depth)}

    def snapshot_line(self):
        self.fseq += 1
        return {
            "type": "snapshot", "symbol": self.symbol, "seq": self.fseq, "price_decimals": PD, "size_decimals": SD,
            "bids": [[fmt(p, PD), fmt(s, SD)] for p, s in sorted(self.bid.items(), reverse=True)],
            "asks": [[fmt(p, PD), fmt(s, SD)] for p, s in sorted(self.ask.items())],
            "exchange_ts_ns": time.time_ns(),
        }

    def random_delta_line(self):
        ups = {"bids": [], "asks": []}
        for _ in range(self.rng.randint(1, 4)):
            side, book = self.rng.choice((("bids", self.bid), ("asks", self.ask)))
            r = self.rng.random()
            if r < 0.3 and book:
                price, size = self.rng.choice(sorted(book)), 0
            elif r < 0.35:
                price, size = (self.rng.randint(5000, 9000) if side == "bids" else self.rng.randint(11000, 15000)), 0
            else:
                price = self.rng.randint(9000, 9999) if side == "bids" else self.rng.randint(10001, 11000)
                size = self.rng.randint(1, 10**6)
            if size == 0:
                book.pop(price, None)
            else:
                book[price] = size
            ups[side].append([fmt(price, PD), fmt(size, SD)])
        self.fseq += 1
        return {"type": "delta", "symbol": self.symbol, "seq": self.fseq, **ups, "exchange_ts_ns": time.time_ns()}

    def levels(self):
        return sorted(self.bid.items(), reverse=True), sorted(self.ask.items())


def matches(client, ref, channel="book", depth=None):
    b = client.book(ref.symbol, channel)
    v = b.snapshot() if b is not None else None
    bids, asks = ref.levels()
    return v is not None and (list(v.bids_raw), list(v.asks_raw)) == (bids[:depth], asks[:depth])


async def subscribe_when_known(client, symbols, channels, timeout=WAIT_S):
    """The engine knows a symbol once its snapshot went through the ingest."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.subscribe(symbols, channels)
        except TickwireError as e:
            if e.code != "unknown_symbol" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("encoding", ["proto", "json"])
async def test_books_and_trades_equal_the_feed(engine_factory, encoding):
    eng = engine_factory()
    ref = RefBook("BTC-USD", random.Random(7))
    events = []
    async with Feed(eng.ingest_json) as feed, Client(eng.url, encoding=encoding) as client:
        client.on("*", events.append)
        await feed.line(ref.snapshot_line())
        sub = await subscribe_when_known(client, ["BTC-USD"], ["book", "trades"])
        assert sub.instruments[0].price_decimals == PD and sub.instruments[0].size_decimals == SD
        await until(lambda: matches(client, ref), what="the snapshot")
        first_seq = client.book("BTC-USD").seq
        n = 300
        for i in range(n):
            await feed.line(ref.random_delta_line())
            if i % 60 == 0:
                await feed.line({"type": "trade", "symbol": "BTC-USD", "price": "100.01", "size": "0.0100",
                                 "aggressor": "ask", "trade_id": f"t{i}", "exchange_ts_ns": time.time_ns()})
        await until(lambda: client.book("BTC-USD").seq == first_seq + n, what=f"seq {first_seq + n}")
        assert matches(client, ref), "the client's book differs from the feed's"
        v = client.snapshot("BTC-USD")
        assert v.bids[0][0] == Decimal(fmt(ref.levels()[0][0][0], PD))
        trades = await until(lambda: [e.trade for e in events if e.kind == "trade"] if
                             len([e for e in events if e.kind == "trade"]) == 5 else None, what="5 trades")
        assert [t.seq for t in trades] == [trades[0].seq + i for i in range(5)]
        assert all(t.price == Decimal("100.01") and t.size == Decimal("0.0100") and t.aggressor == "ask" for t in trades)
        assert [e for e in events if e.kind == "error"] == []


@pytest.mark.parametrize("channel", ["book.5", "book.5@100ms", "book@50ms"])
async def test_derived_channels_equal_the_feed(engine_factory, channel):
    """PROTOCOL §9: the client's N-level (and conflated) book, checked by
    prev_seq and its own checksum, equals the top N of the feed's."""
    eng = engine_factory()
    ref = RefBook("XRP-USD", random.Random(9), depth=12)
    depth = channel_depth(channel)
    events = []
    async with Feed(eng.ingest_json) as feed, Client(eng.url, encoding="json") as client:
        client.on("*", events.append)
        await feed.line(ref.snapshot_line())
        await subscribe_when_known(client, ["XRP-USD"], [channel])
        await until(lambda: matches(client, ref, channel, depth), what="the snapshot")
        for i in range(200):
            await feed.line(ref.random_delta_line())
            if i % 50 == 0:
                await asyncio.sleep(0.06)  # let conflation intervals pass mid-stream
        await until(lambda: matches(client, ref, channel, depth), what=f"the top {depth} after 200 deltas")
        assert [e for e in events if e.kind == "error"] == []


async def test_resync_after_a_feed_gap(engine_factory):
    eng = engine_factory()
    ref = RefBook("ETH-USD", random.Random(3))
    events = []
    async with Feed(eng.ingest_json) as feed, Client(eng.url) as client:
        client.on("*", events.append)
        await feed.line(ref.snapshot_line())
        await subscribe_when_known(client, ["ETH-USD"], ["book"])
        for _ in range(20):
            await feed.line(ref.random_delta_line())
        await until(lambda: matches(client, ref), what="20 deltas")
        gap = ref.random_delta_line()
        gap["seq"] += 5  # the feed skips: the engine must stop the book
        await feed.line(gap)
        await until(lambda: [e for e in events if e.kind == "stale" and e.reason == "feed_gap"], what="Stale{feed_gap}")
        assert not client.book("ETH-USD").verified and client.snapshot("ETH-USD") is None
        ref.bid = {9000: 1, 8000: 2}
        ref.ask = {10500: 3}
        await feed.line(ref.snapshot_line())
        await until(lambda: matches(client, ref), what="the feed's new snapshot")
        for _ in range(20):
            await feed.line(ref.random_delta_line())
        await until(lambda: matches(client, ref), what="deltas after the new snapshot")
        assert [e for e in events if e.kind == "error"] == []


async def test_reconnect_resumes_or_resyncs(engine_factory):
    eng = engine_factory()
    ref = RefBook("SOL-USD", random.Random(5))
    events = []
    async with Feed(eng.ingest_json) as feed, Client(eng.url, backoff_base_s=0.05) as client:
        client.on("*", events.append)
        await feed.line(ref.snapshot_line())
        await subscribe_when_known(client, ["SOL-USD"], ["book", "trades"])
        for _ in range(50):
            await feed.line(ref.random_delta_line())
        await until(lambda: matches(client, ref), what="50 deltas")
        client.drop_connection()
        for _ in range(50):  # while the client is away
            await feed.line(ref.random_delta_line())
        await until(lambda: client.connects == 2 and matches(client, ref), what="the book after the reconnect")
        for _ in range(20):
            await feed.line(ref.random_delta_line())
        await until(lambda: matches(client, ref), what="live deltas after the reconnect")
        kinds = [e.kind for e in events]
        assert kinds.index("disconnected") < kinds.index("connected")  # the first connect was before client.on
        assert [e for e in events if e.kind == "error"] == []


async def test_engine_restart_new_epoch(engine_factory):
    eng = engine_factory()
    ref = RefBook("ADA-USD", random.Random(11))
    events = []
    async with Client(eng.url, backoff_base_s=0.05, backoff_max_s=0.5) as client:
        client.on("*", events.append)
        async with Feed(eng.ingest_json) as feed:
            await feed.line(ref.snapshot_line())
            await subscribe_when_known(client, ["ADA-USD"], ["book"])
            await until(lambda: matches(client, ref), what="the snapshot")
        epoch1 = client.book("ADA-USD").epoch
        eng.kill()
        await until(lambda: not client.connected, what="the client to see the engine gone")
        assert client.snapshot("ADA-USD") is None
        eng2 = engine_factory(listen=eng.ws_addr)
        ref.bid = {9100: 11}
        ref.ask = {10100: 12, 10200: 13}
        async with Feed(eng2.ingest_json) as feed:
            await feed.line(ref.snapshot_line())
            await until(lambda: client.connected, timeout=20, what="the reconnect")
            await until(lambda: matches(client, ref), timeout=20, what="the new engine's book")
            for _ in range(20):
                await feed.line(ref.random_delta_line())
            await until(lambda: matches(client, ref), what="deltas on the new engine")
        assert client.book("ADA-USD").epoch != epoch1


def token(secret, sub="alice", ttl_s=60, **tw):
    claims = {"sub": sub, "exp": int(time.time()) + ttl_s}
    if tw:
        claims["tw"] = tw
    return jwt.encode(claims, secret, algorithm="HS256")


async def test_auth_entitlements_and_refresh(engine_factory, tmp_path):
    secret = "s3cret-for-the-python-sdk-tests-0123456789abcdef"
    (tmp_path / "jwt.secret").write_text(secret)
    eng = engine_factory(args=["--auth", "required", "--jwt-secret-file", str(tmp_path / "jwt.secret")])
    ref = RefBook("BTC-EUR", random.Random(1))
    async with Feed(eng.ingest_json) as feed:
        await feed.line(ref.snapshot_line())

        bad = Client(eng.url, token=token("wrong-secret-wrong-secret-wrong-secret"), reconnect=False)
        with pytest.raises(TickwireError) as e:
            await asyncio.wait_for(bad.connect(), WAIT_S)
        assert e.value.code == "unauthorized"
        await bad.close()

        tokens = [token(secret, ttl_s=60, symbols=["BTC-*"], channels=["book", "trades"])]
        async with Client(eng.url, encoding="json", token=lambda: tokens[-1]) as client:
            first = client.authenticated
            assert first is not None and first.sub == "alice"
            await subscribe_when_known(client, ["BTC-EUR"], ["book"])
            await until(lambda: matches(client, ref), what="an entitled book")
            with pytest.raises(TickwireError) as e:
                await client.subscribe(["ETH-USD"], ["book"])
            assert e.value.code == "forbidden"
            tokens.append(token(secret, ttl_s=120, symbols=["BTC-*"]))
            again = await client.authenticate()
            assert again.sub == "alice" and again.expires_at_ns > first.expires_at_ns
            with pytest.raises(TickwireError) as e:
                await client.authenticate(token(secret, sub="mallory", ttl_s=300))
            assert e.value.code == "forbidden"
            await feed.line(ref.random_delta_line())
            await until(lambda: matches(client, ref), what="the book after the refresh")
