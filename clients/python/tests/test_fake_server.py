"""The client against a scripted fake server: the happy path in both
encodings, and every kind of bad input, each reported as an `error` event and
resolved by a resync or a reconnect, never a wrong book nor an exception in
the caller."""

import asyncio
from decimal import Decimal

import pytest

from conftest import WAIT_S, FakeServer, until
from tickwire_client import BookNotVerified, Client, TickwireError, channel_depth

ENCODINGS = ["proto", "json"]
BIDS = [(10050, 12500), (10000, 5000), (9950, 1)]
ASKS = [(10100, 7000), (10150, 30000)]


def fresh_book():
    return {"bid": dict(BIDS), "ask": dict(ASKS)}


def levels(ref):
    return sorted(ref["bid"].items(), reverse=True), sorted(ref["ask"].items())


class Harness:
    """A client subscribed to X's book (and trades) on a fake server, the
    snapshot applied."""

    def __init__(self, server, client, conn):
        self.server, self.client, self.conn = server, client, conn
        self.events = []
        client.on("*", self.events.append)

    def errors(self, reason=None):
        return [e for e in self.events if e.kind == "error" and (reason is None or e.reason == reason)]


async def start(encoding, channels=("book", "trades"), **kw):
    server = FakeServer(encoding, decimals={"X": (2, 4)})
    await server.__aenter__()
    client = Client(server.url, encoding=encoding, backoff_base_s=0.05, **kw)
    await asyncio.wait_for(client.connect(), WAIT_S)
    conn = await server.accept()
    h = Harness(server, client, conn)
    sub = asyncio.create_task(client.subscribe("X", list(channels)))
    req = await conn.request()
    assert req == {"op": "subscribe", "symbols": ["X"], "channels": list(channels), "id": req["id"]}
    await conn.subscribed(req)
    await asyncio.wait_for(sub, WAIT_S)
    if any(c.startswith("book") for c in channels):
        n = channel_depth(channels[0])
        await conn.snapshot("X", 10, BIDS[:n], ASKS[:n], channel=channels[0])
        await until(lambda: client.book("X") and client.book("X").verified, what="first snapshot")
    return h


async def stop(h):
    await asyncio.wait_for(h.client.close(), WAIT_S)
    await h.server.__aexit__()


async def expect_resync(h, snapshot_seq=20, bids=BIDS, asks=ASKS):
    """The client resubscribes X's book; the fake answers with a fresh snapshot."""
    req = await h.conn.request()
    assert req["op"] == "subscribe" and req["symbols"] == ["X"] and req["channels"] == ["book"]
    await h.conn.subscribed(req)
    await h.conn.snapshot("X", snapshot_seq, bids, asks)
    await until(lambda: h.client.book("X").verified and h.client.book("X").seq == snapshot_seq, what="resynced book")


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_book_and_trades(encoding):
    h = await start(encoding)
    ref = fresh_book()
    try:
        await h.conn.delta("X", 11, [("bid", 10050, 0), ("ask", 10120, 25)], ref)
        await h.conn.delta("X", 12, [("bid", 10060, 1)], ref)
        await h.conn.send("trade", symbol="X", seq=1, price=10100, size=2500, aggressor="bid", trade_id="t1")
        await until(lambda: h.client.book("X").seq == 12, what="two deltas")
        v = h.client.snapshot("X")
        assert (list(v.bids_raw), list(v.asks_raw)) == levels(ref)
        assert v.bids[0] == (Decimal("100.60"), Decimal("0.0001"))
        trades = await until(lambda: [e.trade for e in h.events if e.kind == "trade"], what="trade")
        assert trades[0].price == Decimal("101.00") and trades[0].size == Decimal("0.2500") and trades[0].aggressor == "bid"
        assert h.errors() == []
    finally:
        await stop(h)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_checksum_mismatch_resyncs(encoding):
    h = await start(encoding)
    try:
        await h.conn.delta("X", 11, [("bid", 10050, 0)], fresh_book(), csum=123)
        await until(lambda: h.errors("checksum"), what="checksum error")
        b = h.client.book("X")
        assert not b.verified and b.snapshot() is None
        with pytest.raises(BookNotVerified):
            b.bids()
        # deltas still in flight before the resync's snapshot are not applied
        await h.conn.delta("X", 12, [("bid", 1, 1)], fresh_book(), prev_seq=11)
        await expect_resync(h, 30, [(9000, 1)], [(9100, 2)])
        assert h.client.snapshot("X").bids_raw == ((9000, 1),)
        assert [e.kind for e in h.events if e.kind == "resync"] == ["resync"]
    finally:
        await stop(h)


@pytest.mark.parametrize("prev_seq,seq,reason", [(12, 13, "seq_gap"), (9, 10, "seq_backwards"), (10, 10, "seq_backwards")])
async def test_sequence_faults_resync(prev_seq, seq, reason):
    h = await start("proto")
    try:
        await h.conn.delta("X", seq, [("bid", 10050, 0)], fresh_book(), prev_seq=prev_seq)
        await until(lambda: h.errors(reason), what=reason)
        assert h.client.snapshot("X") is None
        await expect_resync(h)
    finally:
        await stop(h)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("bids,asks", [
    ([(10100, 1)], [(10000, 1)]),                 # crossed
    ([(10000, 1), (10050, 1)], [(10100, 1)]),     # unsorted bids
    ([(10000, 1)], [(10200, 1), (10100, 1)]),     # unsorted asks
    ([(10000, 0)], [(10100, 1)]),                 # zero size
])
async def test_bad_snapshot_resyncs(encoding, bids, asks):
    h = await start(encoding)
    try:
        await h.conn.snapshot("X", 11, bids, asks)
        await until(lambda: h.errors("bad_snapshot"), what="bad_snapshot")
        assert h.client.snapshot("X") is None
        await expect_resync(h)
    finally:
        await stop(h)


async def test_negative_size_in_a_proto_snapshot_resyncs():
    h = await start("proto")
    try:
        await h.conn.snapshot("X", 11, [(10000, -5)], [(10100, 1)])
        await until(lambda: h.errors("bad_snapshot"), what="bad_snapshot")
        await expect_resync(h)
    finally:
        await stop(h)


async def test_a_book_that_keeps_failing_is_resynced_with_backoff():
    h = await start("proto", resync_backoff_max_s=0.4)
    try:
        times = []
        for i in range(3):
            await h.conn.snapshot("X", 11 + i, BIDS, ASKS, csum=1)
            req = await h.conn.request()
            times.append(asyncio.get_running_loop().time())
            await h.conn.subscribed(req)
        assert times[2] - times[1] >= 0.05  # the second and later resyncs wait
        await h.conn.snapshot("X", 20, BIDS, ASKS)
        await until(lambda: h.client.book("X").verified, what="verified at last")
    finally:
        await stop(h)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_undecodable_frame_reconnects_and_resumes(encoding):
    h = await start(encoding)
    ref = fresh_book()
    try:
        await h.conn.delta("X", 11, [("ask", 10120, 3)], ref)
        await until(lambda: h.client.book("X").seq == 11, what="delta 11")
        await h.conn.send_raw(b"\x0a\xff\xff" if encoding == "proto" else "{not json")
        await until(lambda: h.errors("decode"), what="decode error")
        conn2 = await h.server.accept()
        req = await conn2.request()
        assert req["resume"] == {"X": {"epoch": 1, "book": 11}}
        assert h.client.snapshot("X") is None  # not vouched for until resumed
        await conn2.subscribed(req, resumed=["X:book"])
        await conn2.delta("X", 12, [("bid", 9990, 4)], ref)
        await until(lambda: h.client.book("X").verified and h.client.book("X").seq == 12, what="resumed delta")
        v = h.client.snapshot("X")
        assert (list(v.bids_raw), list(v.asks_raw)) == levels(ref)
        assert any(e.kind == "resumed" for e in h.events)
    finally:
        await stop(h)


async def test_reconnect_without_resume_takes_the_snapshot():
    h = await start("json", channels=("book",))
    try:
        h.client.drop_connection()
        conn2 = await h.server.accept()
        req = await conn2.request()
        assert req["resume"]["X"]["book"] == 10
        await conn2.subscribed(req)  # nothing resumed
        await conn2.delta("X", 11, [("bid", 1, 1)], fresh_book())  # before the snapshot: ignored
        await conn2.snapshot("X", 15, [(1, 1)], [(2, 2)], epoch=2)
        await until(lambda: h.client.book("X").verified and h.client.book("X").seq == 15, what="snapshot after reconnect")
        assert h.client.snapshot("X").bids_raw == ((1, 1),) and h.client.book("X").epoch == 2
        assert h.client.connects == 2
    finally:
        await stop(h)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_messages_for_symbols_not_subscribed_are_reported_and_ignored(encoding):
    h = await start(encoding)
    try:
        await h.conn.snapshot("Y", 1, BIDS, ASKS)
        await h.conn.send("trade", symbol="Y", seq=1, price=1, size=1, aggressor="", trade_id="")
        await h.conn.send("stale", symbol="Y", dropped=0, reason="feed_gap")
        await h.conn.snapshot("X", 11, BIDS, ASKS, channel="book.10")  # a channel not held
        await until(lambda: len(h.errors("unsolicited")) == 4, what="4 unsolicited errors")
        assert h.client.book("Y") is None and h.client.book("X").verified
    finally:
        await stop(h)


async def test_stale_then_snapshot():
    h = await start("proto")
    try:
        await h.conn.send("stale", symbol="X", dropped=0, reason="feed_gap")
        await until(lambda: not h.client.book("X").verified, what="unverified after Stale")
        assert [e.reason for e in h.events if e.kind == "stale"] == ["feed_gap"]
        await h.conn.snapshot("X", 11, [(5, 5)], [(6, 6)])
        await until(lambda: h.client.book("X").verified, what="snapshot after Stale")
    finally:
        await stop(h)


async def test_trade_sequence_faults():
    h = await start("proto", channels=("trades",))
    try:
        for seq in (1, 2, 2, 5):
            await h.conn.send("trade", symbol="X", seq=seq, price=1, size=1, aggressor="ask", trade_id=str(seq))
        await until(lambda: [e for e in h.events if e.kind == "trade_gap"], what="trade gap")
        assert [e.trade.seq for e in h.events if e.kind == "trade"] == [1, 2, 5]
        assert len(h.errors("trade_seq")) == 1
    finally:
        await stop(h)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_error_answers_raise_and_match_by_id(encoding):
    h = await start(encoding)
    try:
        sub = asyncio.create_task(h.client.subscribe(["NOPE"], ["book"]))
        req = await h.conn.request()
        await h.conn.send("error", id=req["id"] + 100, code="bad_request", message="someone else's")
        await h.conn.send("error", id=req["id"], code="unknown_symbol", message="NOPE")
        with pytest.raises(TickwireError) as e:
            await asyncio.wait_for(sub, WAIT_S)
        assert e.value.code == "unknown_symbol" and e.value.id == req["id"]
        assert any(ev.reason == "server" and "someone else" in ev.detail for ev in h.errors())
        unsub = asyncio.create_task(h.client.unsubscribe("X", ["book", "trades"]))
        req = await h.conn.request()
        assert req["op"] == "unsubscribe"
        await h.conn.send("unsubscribed", id=req["id"], symbols=["X"], channels=["book", "trades"])
        await asyncio.wait_for(unsub, WAIT_S)
        assert h.client.book("X") is None and h.client.subscriptions() == {}
    finally:
        await stop(h)


async def test_auth_first_then_refresh():
    tokens = iter(["t1", "t2"])
    server = FakeServer("json")
    async with server:
        client = Client(server.url, encoding="json", token=lambda: next(tokens))
        connecting = asyncio.create_task(client.connect())
        conn = await server.accept()
        req = await conn.request()
        assert req["op"] == "auth" and req["token"] == "t1"
        await conn.send("authenticated", id=req["id"], sub="alice", expires_at_ns=0)
        await asyncio.wait_for(connecting, WAIT_S)
        refresh = asyncio.create_task(client.authenticate())
        req = await conn.request()
        assert req["op"] == "auth" and req["token"] == "t2"
        await conn.send("error", id=req["id"], code="forbidden", message="another sub")
        with pytest.raises(TickwireError, match="forbidden"):
            await asyncio.wait_for(refresh, WAIT_S)
        await asyncio.wait_for(client.close(), WAIT_S)


async def test_refused_token_fails_connect():
    async with FakeServer("proto") as server:
        client = Client(server.url, token="bad")
        connecting = asyncio.create_task(client.connect())
        conn = await server.accept()
        req = await conn.request()
        await conn.send("error", id=req["id"], code="unauthorized", message="bad token")
        with pytest.raises(TickwireError, match="unauthorized"):
            await asyncio.wait_for(connecting, WAIT_S)
        await client.close()


async def test_injectable_connect_and_subprotocol():
    seen = []
    from websockets.asyncio.client import connect as real

    def spy(url, **kw):
        seen.append((url, kw["subprotocols"]))
        return real(url, **kw)

    async with FakeServer("json") as server:
        client = Client(server.url, encoding="json", connect=spy)
        await asyncio.wait_for(client.connect(), WAIT_S)
        await server.accept()
        assert seen == [(server.url, ["tickwire.v1.json"])]
        await client.close()


async def test_derived_channel_and_variant_switch():
    h = await start("json", channels=("book.2@100ms",))
    try:
        b = h.client.book("X", "book.2@100ms")
        assert b.verified and b.bids_raw() == [(10050, 12500), (10000, 5000)] and len(b.asks_raw()) == 2
        ref = {"bid": {10050: 12500, 10000: 5000}, "ask": dict(ASKS)}
        # conflated: seq jumps, prev_seq names the previous emission
        await h.conn.delta("X", 17, [("bid", 10050, 0), ("bid", 9950, 1)], ref, prev_seq=10, channel="book.2@100ms")
        await until(lambda: b.seq == 17, what="conflated delta")
        assert b.verified and b.bids_raw() == [(10000, 5000), (9950, 1)]
        sub = asyncio.create_task(h.client.subscribe("X", ["book"]))
        req = await h.conn.request()
        await h.conn.subscribed(req)
        await asyncio.wait_for(sub, WAIT_S)
        await h.conn.snapshot("X", 18, BIDS, ASKS)
        await until(lambda: h.client.book("X", "book") and h.client.book("X", "book").verified, what="the new variant")
        assert h.client.book("X", "book.2@100ms") is None
        assert h.client.subscriptions() == {"X": {"book"}}
        assert h.errors() == []
    finally:
        await stop(h)


async def test_callable_token_is_refreshed_before_exp():
    import time as _time

    n = iter(range(1, 100))
    async with FakeServer("proto") as server:
        client = Client(server.url, token=lambda: f"t{next(n)}")
        connecting = asyncio.create_task(client.connect())
        conn = await server.accept()
        req = await conn.request()
        assert req["token"] == "t1"
        await conn.send("authenticated", id=req["id"], sub="bot", expires_at_ns=_time.time_ns() + 1_500_000_000)
        await asyncio.wait_for(connecting, WAIT_S)
        req = await conn.request(timeout=5)  # the refresh, about 1.2 s later
        assert req["op"] == "auth" and req["token"] == "t2"
        await conn.send("authenticated", id=req["id"], sub="bot", expires_at_ns=_time.time_ns() + 3600 * 10**9)
        await until(lambda: client.authenticated.expires_at_ns > _time.time_ns() + 10**12, what="refreshed")
        await asyncio.wait_for(client.close(), WAIT_S)


async def test_decimals_follow_the_latest_snapshot_in_json():
    h = await start("json", channels=("book", "trades"))
    try:
        h.conn.decimals["X"] = (3, 1)  # the feed replaced the book with other decimals
        await h.conn.snapshot("X", 11, [(100500, 15)], [(100600, 2)])
        await until(lambda: h.client.book("X").seq == 11, what="snapshot at 3 decimals")
        ref = {"bid": {100500: 15}, "ask": {100600: 2}}
        await h.conn.delta("X", 12, [("bid", 100400, 7)], ref)
        await h.conn.send("trade", symbol="X", seq=1, price=100550, size=3, aggressor="", trade_id="")
        await until(lambda: h.client.book("X").seq == 12, what="delta at 3 decimals")
        assert h.client.snapshot("X").bids[1] == (Decimal("100.400"), Decimal("0.7"))
        trade = (await until(lambda: [e.trade for e in h.events if e.kind == "trade"], what="trade"))[0]
        assert (trade.price, trade.size) == (Decimal("100.550"), Decimal("0.3"))
        assert h.errors() == []
    finally:
        await stop(h)


async def test_a_number_outside_int64_is_a_decode_error():
    h = await start("json", channels=("book",))
    try:
        await h.conn.send_raw('{"type":"snapshot","symbol":"X","seq":11,"bids":[["1.00","99999999999999999999.0000"]],'
                              '"asks":[],"price_decimals":2,"size_decimals":4,"checksum":0,"epoch":1}')
        await until(lambda: h.errors("decode"), what="decode error")
        conn2 = await h.server.accept()
        req = await conn2.request()
        assert req["resume"] == {"X": {"epoch": 1, "book": 10}}
    finally:
        await stop(h)


async def test_a_refused_resync_is_retried():
    h = await start("proto", channels=("book",))
    try:
        await h.conn.snapshot("X", 11, BIDS, ASKS, csum=5)
        req = await h.conn.request()
        await h.conn.send("error", id=req["id"], code="rate_limited", message="slow down")
        await expect_resync(h)
        assert any(e.reason == "request" and "rate_limited" in e.detail for e in h.errors())
    finally:
        await stop(h)


async def test_a_server_close_code_is_reported_and_the_client_reconnects():
    h = await start("proto", channels=("book",))
    try:
        await h.conn.ws.close(4001, "slow consumer")
        conn2 = await h.server.accept()
        req = await conn2.request()
        assert req["resume"]["X"]["book"] == 10
        assert [e.detail for e in h.events if e.kind == "disconnected"] == ["close 4001 slow consumer"]
    finally:
        await stop(h)


async def test_a_snapshot_that_never_comes_is_asked_for_again():
    h = await start("proto", channels=("book",), snapshot_timeout_s=0.3)
    try:
        await h.conn.send("stale", symbol="X", dropped=3, reason="slow_consumer")  # a snapshot is owed
        req = await h.conn.request(timeout=3)
        assert req["op"] == "subscribe" and req["channels"] == ["book"]
        assert h.errors("no_snapshot")
        await h.conn.subscribed(req)
        await h.conn.snapshot("X", 20, BIDS, ASKS)
        await until(lambda: h.client.book("X").verified, what="the snapshot at last")
        await h.conn.send("stale", symbol="X", dropped=0, reason="feed_gap")  # owed only when the feed is back
        await asyncio.sleep(0.8)
        assert h.conn.requests.empty()
    finally:
        await stop(h)


async def test_events_iterator_sees_events_from_its_call_and_ends_at_close():
    h = await start("proto", channels=("book",))
    it = h.client.events({"book", "stale"})
    await h.conn.send("stale", symbol="X", dropped=0, reason="feed_down")
    await h.conn.snapshot("X", 11, BIDS, ASKS)
    got = []

    async def consume():
        async for ev in it:
            got.append((ev.kind, ev.seq))

    task = asyncio.create_task(consume())
    await until(lambda: len(got) == 2, what="two events")
    await stop(h)
    await asyncio.wait_for(task, WAIT_S)
    assert got == [("stale", None), ("book", 11)]
