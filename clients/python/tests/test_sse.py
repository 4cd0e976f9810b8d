"""GET /sse (PROTOCOL §11) against the real engine with nothing but the
stdlib's `http.client`: the test parses the event stream by the HTML
event-stream rules itself, rebuilds the JSON books and checks them against
the feed's own (test_engine.RefBook), then comes back with `Last-Event-ID` as
a browser would and checks the resume. Every wait is bounded."""

import http.client
import json
import queue
import random
import socket
import threading
import time

from conftest import WAIT_S
from test_engine import RefBook
from tickwire_client import checksum
from tickwire_client.messages import parse_decimal

SYMS = ("SSE-AAA", "SSE-BBB")
PATH = f"/sse?symbols={','.join(SYMS)}&channels=book,trades"


class EventStream:
    """The HTML "event stream" interpretation (WHATWG HTML §9.2.6): lines end
    in CRLF, LF or CR; a blank line dispatches the event if its data buffer
    is not empty; `:` starts a comment; `field: value` (one leading space of
    the value dropped, a line without a colon is a field with an empty
    value); `data` lines join with LF; `id` sets the last event ID (unless it
    holds NUL), which stays across events until another `id`; `retry` takes
    ASCII digits only; other fields are ignored. An event cut off by the end
    of the stream is not dispatched."""

    def __init__(self):
        self.buf = b""
        self.first = True
        self.data = []
        self.event = ""
        self.id_seen = False
        self.last_event_id = ""
        self.retry = None
        self.comments = []
        self.events = []  # (type, data, last_event_id, whether the event had an id field)

    def feed(self, chunk: bytes):
        self.buf += chunk
        while True:
            cut = min((i for i in (self.buf.find(b"\r"), self.buf.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                return
            if self.buf[cut:cut + 1] == b"\r" and cut + 1 == len(self.buf):
                return  # a CR at the end of what came: an LF may follow
            line, end = self.buf[:cut], cut + 1
            if self.buf[cut:cut + 2] == b"\r\n":
                end += 1
            self.buf = self.buf[end:]
            text = line.decode("utf-8", errors="replace")
            if self.first:
                text = text.removeprefix("\ufeff")
                self.first = False
            self._line(text)

    def _line(self, line: str):
        if line == "":
            if self.data:
                data = "\n".join(self.data)
                self.events.append((self.event or "message", data, self.last_event_id, self.id_seen))
            self.data, self.event, self.id_seen = [], "", False
            return
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return
        field, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if field == "event":
            self.event = value
        elif field == "data":
            self.data.append(value)
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
                self.id_seen = True
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)


def test_event_stream_parser_follows_the_html_rules():
    """The parser itself, on the spec's corner cases (so that the engine tests
    below rest on a parser that is right)."""
    p = EventStream()
    for chunk in [b"\xef\xbb\xbfretry: 1000\r\n: ping\r", b"\nevent: a\ndata: x\ndata:y\nid: 7\n\n",
                  b"data: no type\r\rdata\n\n", b"event: b\nid\n\n", b"id: 8\nunknown: f\ndata:  two\n\ndata: cut"]:
        p.feed(chunk)
    assert p.retry == 1000 and p.comments == ["ping"]
    assert p.events == [("a", "x\ny", "7", True), ("message", "no type", "7", False), ("message", "", "7", False),
                        ("message", " two", "8", True)]


def http_get(addr, path, headers=None):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
    return conn, conn.getresponse()


class Stream:
    """An open /sse response read by a thread (blocking `read1`, so that no
    timeout ever lands inside http.client's body framing) into a queue; the
    test pulls from it with deadlines."""

    def __init__(self, addr, path, last_event_id=None):
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        self.conn, self.resp = http_get(addr, path, headers)
        self.parser = EventStream()
        self.chunks = queue.Queue()
        self.eof = False
        self.n = 0  # events consumed by take()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                b = self.resp.read1(65536)
                if not b:
                    break
                self.chunks.put(b)
        except (OSError, ValueError, http.client.HTTPException):
            pass
        self.chunks.put(None)

    def pump(self, wait=0.02):
        try:
            while True:
                b = self.chunks.get(timeout=wait)
                if b is None:
                    self.eof = True
                    return
                self.parser.feed(b)
                wait = 0
        except queue.Empty:
            pass

    def close(self):
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.conn.close()


class Books:
    """The client's side: JSON snapshots and deltas applied per symbol, each
    delta's prev_seq checked against the seq held and its checksum against
    the book it leaves; trades' seq contiguous. Violations are collected."""

    def __init__(self):
        self.seq, self.book, self.dec, self.trade_seq = {}, {}, {}, {}
        self.trades = {s: 0 for s in SYMS}
        self.deltas = {s: 0 for s in SYMS}
        self.snapshots = {s: 0 for s in SYMS}
        self.violations = []
        self.snapshot_allowed = True  # False after a resume: any snapshot is a violation

    def levels(self, sym):
        b = self.book[sym]
        return sorted(b["bid"].items(), reverse=True), sorted(b["ask"].items())

    def apply(self, kind, m):
        sym = m.get("symbol")
        if kind == "snapshot":
            if not self.snapshot_allowed:
                self.violations.append(f"{sym}: a snapshot (seq {m['seq']}) on a resumed stream")
            self.dec[sym] = (m["price_decimals"], m["size_decimals"])
            pd, sd = self.dec[sym]
            self.book[sym] = {
                side: {parse_decimal(p, pd, signed=True): parse_decimal(s, sd, signed=False) for p, s in m[key]}
                for side, key in (("bid", "bids"), ("ask", "asks"))
            }
            self.seq[sym] = m["seq"]
            self.snapshots[sym] += 1
            self._check_sum(sym, m)
        elif kind == "delta":
            if sym not in self.seq:
                self.violations.append(f"{sym}: delta {m['seq']} before any snapshot")
                return
            if m["prev_seq"] != self.seq[sym] or m["seq"] != m["prev_seq"] + 1:
                self.violations.append(f"{sym}: delta seq {m['seq']} prev_seq {m['prev_seq']}, held {self.seq[sym]}")
            pd, sd = self.dec[sym]
            for side, key in (("bid", "bids"), ("ask", "asks")):
                for p, s in m[key]:
                    price, size = parse_decimal(p, pd, signed=True), parse_decimal(s, sd, signed=False)
                    if size == 0:
                        self.book[sym][side].pop(price, None)
                    else:
                        self.book[sym][side][price] = size
            self.seq[sym] = m["seq"]
            self.deltas[sym] += 1
            self._check_sum(sym, m)
        elif kind == "trade":
            if sym in self.trade_seq and m["seq"] != self.trade_seq[sym] + 1:
                self.violations.append(f"{sym}: trade seq {m['seq']} after {self.trade_seq[sym]}")
            self.trade_seq[sym] = m["seq"]
            self.trades[sym] += 1
        elif kind == "stale":
            self.violations.append(f"stale: {m}")

    def _check_sum(self, sym, m):
        bids, asks = self.levels(sym)
        if checksum(bids, asks) != m["checksum"]:
            self.violations.append(f"{sym}: checksum mismatch at seq {m['seq']}")
        if m.get("channel") != "book":
            self.violations.append(f"{sym}: channel {m.get('channel')!r}")


def consume(stream, books, until_pred, timeout=WAIT_S, what="condition"):
    """Pumps `stream` into `books` until `until_pred()` or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        stream.pump()
        for kind, data, _, _ in stream.parser.events[stream.n:]:
            books.apply(kind, json.loads(data))
        stream.n = len(stream.parser.events)
        if books.violations:
            raise AssertionError(f"while waiting for {what}: {books.violations[:5]}")
        if until_pred():
            return
        if stream.eof:
            raise AssertionError(f"the stream ended while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class SyncFeed:
    """A feed handler on the JSON-lines ingest (PROTOCOL §3), blocking."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
        self.line({"type": "hello", "feed_id": "pytest-sse"})

    def line(self, obj):
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def trade(self, sym, i):
        self.line({"type": "trade", "symbol": sym, "price": "100.01", "size": "0.0100", "aggressor": "bid",
                   "trade_id": f"{sym}-{i}", "exchange_ts_ns": time.time_ns()})


def engine_seqs(addr):
    conn, resp = http_get(addr, "/symbols")
    try:
        assert resp.status == 200
        return {s["symbol"]: s["seq"] for s in json.loads(resp.read())["symbols"]}
    finally:
        conn.close()


def wait_for(pred, timeout=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def feed_deltas(feed, refs, n, trade_every=10, start=0):
    for i in range(start, start + n):
        for ref in refs.values():
            feed.line(ref.random_delta_line())
            if i % trade_every == 0:
                feed.trade(ref.symbol, i)


def matches(books, refs):
    return all(sym in books.book and books.levels(sym) == refs[sym].levels() for sym in SYMS)


def test_sse_books_equal_the_feed_and_resume_from_last_event_id(engine_factory):
    eng = engine_factory(args=["--sse-ping-interval-ms", "200"])
    refs = {s: RefBook(s, random.Random(i)) for i, s in enumerate(SYMS)}
    feed = SyncFeed(eng.ingest_json)
    for ref in refs.values():
        feed.line(ref.snapshot_line())
    wait_for(lambda: set(SYMS) <= set(engine_seqs(eng.ws_addr)), what="the engine to know both symbols")

    s = Stream(eng.ws_addr, PATH)
    assert s.resp.status == 200, s.resp.read()
    assert s.resp.getheader("Content-Type", "").split(";")[0].strip() == "text/event-stream"
    books = Books()
    try:
        consume(s, books, lambda: matches(books, refs), what="both snapshots")
        feed_deltas(feed, refs, 120)  # 12 trades per symbol
        consume(s, books, lambda: all(books.deltas[x] == 120 and books.trades[x] == 12 for x in SYMS),
                what="120 deltas and 12 trades of each symbol")
        # Quiet until a ping comment shows (every 200 ms here).
        consume(s, books, lambda: s.parser.comments, timeout=5, what="a ': ping' comment")
    finally:
        s.close()
    p = s.parser
    assert books.violations == []
    assert matches(books, refs), "the SSE books differ from the feed's"
    assert p.retry == 1000
    assert p.comments and set(p.comments) == {"ping"}, p.comments
    kinds = [e[0] for e in p.events]
    assert kinds[0] == "subscribed" and kinds.count("subscribed") == 1
    sub = json.loads(p.events[0][1])
    assert sub["type"] == "subscribed" and sub["resumed"] == [] and sorted(sub["symbols"]) == sorted(SYMS)
    assert sorted(kinds[1:3]) == ["snapshot", "snapshot"], kinds[:5]
    for kind, data, last_id, had_id in p.events:
        assert json.loads(data)["type"] == kind
        assert had_id == (kind in ("snapshot", "delta", "trade")), f"{kind} with id: {had_id}"
    market_ids = [e[2] for e in p.events if e[3]]
    assert all(market_ids) and len(set(market_ids)) == len(market_ids), "every market event has its own id"
    last_id = p.last_event_id
    assert last_id == market_ids[-1]
    held = {x: (books.seq[x], books.trade_seq[x]) for x in SYMS}

    # Away: 80 more deltas and 8 more trades of each symbol.
    feed_deltas(feed, refs, 80, start=120)
    target = {x: books.seq[x] + 80 for x in SYMS}
    wait_for(lambda: all(engine_seqs(eng.ws_addr)[x] == target[x] for x in SYMS), what="the engine to apply them")

    s2 = Stream(eng.ws_addr, PATH, last_event_id=last_id)
    assert s2.resp.status == 200
    before = (dict(books.deltas), dict(books.trades), dict(books.snapshots))
    books.snapshot_allowed = False
    try:
        consume(s2, books, lambda: all(books.seq.get(x) == target[x] and books.trades[x] == before[1][x] + 8
                                       for x in SYMS), what="the missed deltas and trades")
        feed_deltas(feed, refs, 30, start=200)  # and live after the replay
        consume(s2, books, lambda: all(books.seq[x] == target[x] + 30 for x in SYMS), what="live deltas after the resume")
    finally:
        s2.close()
    p2 = s2.parser
    assert books.violations == []
    assert matches(books, refs), "the resumed books differ from the feed's"
    kinds2 = [e[0] for e in p2.events]
    assert kinds2[0] == "subscribed", kinds2[:3]
    sub2 = json.loads(p2.events[0][1])
    assert sub2["resumed"], "a Last-Event-ID of this stream resumes"
    assert sorted(sub2["resumed"]) == sorted(f"{x}:{c}" for x in SYMS for c in ("book", "trades"))
    assert "snapshot" not in kinds2, "no snapshot after a resume"
    assert books.snapshots == before[2]
    for x in SYMS:
        assert books.deltas[x] == before[0][x] + 110, f"{x}: exactly the missed deltas, then live ones"
        assert books.trades[x] == before[1][x] + 11, f"{x}: exactly the missed trades, then live ones"
        first = next(json.loads(d) for k, d, _, _ in p2.events if k == "delta" and json.loads(d)["symbol"] == x)
        assert first["prev_seq"] == held[x][0], f"{x}: the replay starts right after the seq held"
        first_t = next(json.loads(d) for k, d, _, _ in p2.events if k == "trade" and json.loads(d)["symbol"] == x)
        assert first_t["seq"] == held[x][1] + 1
    assert all(e[2] for e in p2.events[1:] if e[3])


def test_sse_refusals_are_http_errors_with_a_json_body(engine_factory):
    eng = engine_factory()
    ref = RefBook(SYMS[0], random.Random(1))
    feed = SyncFeed(eng.ingest_json)
    feed.line(ref.snapshot_line())
    wait_for(lambda: SYMS[0] in engine_seqs(eng.ws_addr), what="the engine to know the symbol")
    cases = [
        (f"/sse?symbols={SYMS[0]}&channels=book.0", {}, "bad_request"),
        (f"/sse?symbols={SYMS[0]}&channels=book@7ms", {}, "bad_request"),
        (f"/sse?symbols={SYMS[0]}", {}, "bad_request"),
        ("/sse?symbols=NOPE-NOPE&channels=book", {}, "unknown_symbol"),
        (f"/sse?symbols={SYMS[0]}&channels=book", {"Last-Event-ID": "!!!"}, "bad_request"),
    ]
    for path, headers, code in cases:
        conn, resp = http_get(eng.ws_addr, path, headers)
        try:
            body = resp.read()
        finally:
            conn.close()
        assert resp.status == 400, f"{path}: {resp.status} {body!r}"
        assert resp.getheader("Content-Type", "").startswith("application/json"), f"{path}: {resp.getheaders()}"
        err = json.loads(body)
        assert err["type"] == "error" and err["id"] == 0 and err["code"] == code, f"{path}: {err}"
        assert isinstance(err["message"], str) and err["message"], f"{path}: {err}"
    # The engine is unharmed: a good stream opens after them.
    s = Stream(eng.ws_addr, f"/sse?symbols={SYMS[0]}&channels=book")
    books = Books()
    try:
        assert s.resp.status == 200
        consume(s, books, lambda: books.snapshots[SYMS[0]] == 1, what="the snapshot")
    finally:
        s.close()
    assert books.violations == [] and books.levels(SYMS[0]) == ref.levels()
