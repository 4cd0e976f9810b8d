"""The asyncio client: one WebSocket connection at a time, reconnected with
exponential backoff and jitter, subscriptions restored (with a §10 resume)
on every reconnect, books vouched for on every message.

What happens to bad input from the server (each reported as an `error` event,
never raised into the caller's code):

| input | answer |
|---|---|
| a frame that does not decode | close, reconnect (with resume) |
| checksum mismatch, prev_seq/seq gap or backwards, bad snapshot | the book is unverified, that book is resubscribed (a fresh snapshot) |
| a message for a symbol or channel not subscribed | ignored |
| trades seq backwards | the trade is dropped; seq skipping: a `trade_gap` event |
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional, Union

from . import messages as m
from .book import Book, BookError, BookView, channel_depth, to_decimal

log = logging.getLogger("tickwire_client")

SUBPROTOCOLS = {"proto": "tickwire.v1.proto", "json": "tickwire.v1.json"}
BOOK_STALE_REASONS = ("slow_consumer", "feed_gap", "feed_down")

TokenSource = Union[None, str, Callable[[], Union[str, Awaitable[str]]]]


class TickwireError(Exception):
    """An `Error` answer from the server to one of our requests."""

    def __init__(self, code: str, message: str = "", req_id: int = 0):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.id = req_id


class ConnectionLost(Exception):
    """The connection dropped before the server answered the request."""


@dataclass(frozen=True)
class TradeView:
    symbol: str
    seq: int
    price_raw: int
    size_raw: int
    price: Optional[Decimal]  # None when the instrument's decimals are unknown
    size: Optional[Decimal]
    aggressor: str
    trade_id: str
    exchange_ts_ns: int
    ingest_ts_ns: int


@dataclass(frozen=True)
class Event:
    """What the client tells its user. `kind` is one of:
    `book` (a book applied a snapshot or delta: `book`, `seq`),
    `trade` (`trade`), `trade_gap` (`detail` says how many were lost),
    `stale` (`reason`: the server's Stale reason; `message` the Stale),
    `resync` (the client resubscribed a book it could not vouch for; `reason`),
    `resumed` (a book or trades stream continued across a reconnect),
    `error` (`reason`: decode, checksum, seq_gap, seq_backwards, bad_snapshot,
    bad_delta, no_snapshot, unsolicited, trade_seq, request, auth, connect;
    `detail`),
    `subscribed`, `unsubscribed`, `authenticated`, `connected`,
    `disconnected` (`detail`: the close code and reason).
    """

    kind: str
    symbol: Optional[str] = None
    channel: Optional[str] = None
    seq: Optional[int] = None
    book: Optional[Book] = None
    trade: Optional[TradeView] = None
    reason: str = ""
    detail: str = ""
    message: Any = None


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random."""
    d = min(cap, base * (2 ** min(attempt, 30)))
    return d / 2 + random.uniform(0, d / 2)


@dataclass
class _Resync:
    count: int = 0
    last: float = 0.0
    task: Optional[asyncio.Task] = None


class Client:
    """A tickwire WebSocket client.

    `url`: `ws://host:port/ws`. `encoding`: "proto" (binary frames) or "json".
    `token`: None, a JWT string, or a callable (sync or async) returning one;
    a callable is called again at every (re)connect and to refresh the token
    before it expires. `connect`: the function opening a connection,
    `websockets.asyncio.client.connect` by default, called as
    `await connect(url, subprotocols=[...], **connect_kwargs)`.
    """

    def __init__(
        self,
        url: str,
        encoding: str = "proto",
        token: TokenSource = None,
        connect: Optional[Callable[..., Awaitable[Any]]] = None,
        *,
        reconnect: bool = True,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 10.0,
        stable_after_s: float = 5.0,
        request_timeout_s: float = 10.0,
        resync_backoff_max_s: float = 5.0,
        snapshot_timeout_s: float = 10.0,
        refresh_fraction: float = 0.8,
        allow_crossed: bool = False,
        require_prev_seq: bool = True,
        connect_kwargs: Optional[dict] = None,
    ):
        if encoding not in SUBPROTOCOLS:
            raise ValueError(f"encoding must be 'proto' or 'json', not {encoding!r}")
        self.url = url
        self.encoding = encoding
        self._token = token
        if connect is None:
            from websockets.asyncio.client import connect as ws_connect

            connect = ws_connect
        self._connect_fn = connect
        self._connect_kwargs = {"max_size": 16 * 1024 * 1024, **(connect_kwargs or {})}
        self.reconnect = reconnect
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.request_timeout_s = request_timeout_s
        self.resync_backoff_max_s = resync_backoff_max_s
        self.snapshot_timeout_s = snapshot_timeout_s
        self.refresh_fraction = refresh_fraction
        self.allow_crossed = allow_crossed
        self.require_prev_seq = require_prev_seq

        # Server-confirmed subscriptions: symbol -> {channel, ...} (at most one book variant).
        self._subs: Dict[str, set] = {}
        self._books: Dict[tuple, Book] = {}
        self._trade_seq: Dict[str, Optional[int]] = {}
        self.instruments: Dict[str, m.Instrument] = {}
        self.authenticated: Optional[m.Authenticated] = None

        self._next_id = 0
        self._pending: Dict[int, asyncio.Future] = {}
        self._internal: Dict[int, Callable[[Any], None]] = {}
        self._resyncs: Dict[tuple, _Resync] = {}
        # (symbol, channel) -> monotonic deadline for a snapshot the server
        # owes us (after Subscribed, a resync or Stale{slow_consumer}).
        self._awaiting: Dict[tuple, float] = {}
        self._callbacks: Dict[str, list] = {}
        self._queues: list = []
        self._ws = None
        self._run_task: Optional[asyncio.Task] = None
        self._refresh_task: Optional[asyncio.Task] = None
        self._tasks: set = set()
        self._connected = asyncio.Event()
        self._closing = False
        self.connects = 0
        self.counters: Dict[str, int] = {}

    # ------------------------------------------------------------------ public API

    async def connect(self) -> "Client":
        """Open the first connection (and authenticate). Raises if that fails;
        later connection losses are retried in the background."""
        if self._run_task is not None:
            raise RuntimeError("already connected")
        ready = asyncio.get_running_loop().create_future()
        self._run_task = asyncio.create_task(self._run(ready))
        await ready
        return self

    async def close(self) -> None:
        self._closing = True
        ws = self._ws
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass
        for t in [self._run_task, self._refresh_task, *self._tasks]:
            if t is not None and not t.done():
                t.cancel()
        if self._run_task is not None:
            try:
                await self._run_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._fail_pending(ConnectionLost("client closed"))
        for q in self._queues:
            q.put_nowait(None)

    async def __aenter__(self) -> "Client":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: Optional[float] = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def subscribe(self, symbols, channels=("book",), timeout: Optional[float] = None) -> m.Subscribed:
        """Subscribe; resolves with the `Subscribed` answer, raises
        `TickwireError` on an `Error` answer (nothing changed then)."""
        symbols, channels = _as_list(symbols), _as_list(channels)
        for ch in channels:
            if ch != "trades":
                channel_depth(ch)  # ValueError on a name that is no channel
        return await self._request(lambda i: m.subscribe_request(i, symbols, channels), timeout)

    async def unsubscribe(self, symbols, channels=("book",), timeout: Optional[float] = None) -> m.Unsubscribed:
        symbols, channels = _as_list(symbols), _as_list(channels)
        return await self._request(lambda i: m.unsubscribe_request(i, symbols, channels), timeout)

    async def authenticate(self, token: TokenSource = None, timeout: Optional[float] = None) -> m.Authenticated:
        """Send `auth` now (a refresh, §8): with `token` it replaces the
        client's token source. Raises `TickwireError` (`forbidden`,
        `unauthorized`) when refused."""
        if token is not None:
            self._token = token
        tok = await self._get_token()
        if tok is None:
            raise ValueError("no token")
        return await self._request(lambda i: m.auth_request(i, tok), timeout)

    def book(self, symbol: str, channel: Optional[str] = None) -> Optional[Book]:
        """The book held for `symbol` (its one book channel, or `channel`),
        or None. Check `book.verified`, or use `book.snapshot()` (None while
        unverified)."""
        if channel is not None:
            return self._books.get((symbol, channel))
        for (sym, _), b in self._books.items():
            if sym == symbol:
                return b
        return None

    def snapshot(self, symbol: str, channel: Optional[str] = None, depth: Optional[int] = None) -> Optional[BookView]:
        b = self.book(symbol, channel)
        return None if b is None else b.snapshot(depth)

    def subscriptions(self) -> Dict[str, set]:
        return {s: set(c) for s, c in self._subs.items()}

    def on(self, kind: str, callback: Callable[[Event], Any]) -> None:
        """Call `callback(event)` for every event of `kind` ("*" for all).
        A coroutine function is run as a task. Exceptions are logged."""
        self._callbacks.setdefault(kind, []).append(callback)

    def events(self, kinds: Optional[set] = None) -> AsyncIterator[Event]:
        """Every event (or those of `kinds`) from this call on, until
        `close()`: `async for ev in client.events(): ...`."""
        q: asyncio.Queue = asyncio.Queue()
        self._queues.append(q)
        return self._drain(q, kinds)

    async def _drain(self, q: asyncio.Queue, kinds: Optional[set]) -> AsyncIterator[Event]:
        try:
            while True:
                ev = await q.get()
                if ev is None:
                    return
                if kinds is None or ev.kind in kinds:
                    yield ev
        finally:
            self._queues.remove(q)

    def drop_connection(self) -> None:
        """Close the current connection as if the network dropped it: the
        client reconnects and resumes."""
        ws = self._ws
        if ws is not None:
            self._spawn(ws.close())

    # ------------------------------------------------------------------ connection loop

    async def _run(self, ready: asyncio.Future) -> None:
        attempt = 0
        while not self._closing:
            started = time.monotonic()
            try:
                ws = await self._connect_fn(
                    self.url, subprotocols=[SUBPROTOCOLS[self.encoding]], **self._connect_kwargs
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to connect is retried
                if not ready.done():
                    ready.set_exception(e)
                    return
                self._emit(Event("error", reason="connect", detail=repr(e)[:200]))
            else:
                self._ws = ws
                self.connects += 1
                first_failure = None
                try:
                    await self._session(ws, ready)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - the connection failed: reconnect
                    if not ready.done():
                        first_failure = e
                    else:
                        self._emit(Event("error", reason="connection", detail=repr(e)[:200]))
                finally:
                    await _close_quietly(ws)
                    self._ws = None
                    if not self._closing:
                        # §7 close codes: 4001 slow consumer, 4004 token expired, ...
                        code = getattr(ws, "close_code", None)
                        self._disconnected(f"close {code} {getattr(ws, 'close_reason', '') or ''}".strip())
                if first_failure is not None:
                    ready.set_exception(first_failure)
                    return
            if self._closing or not self.reconnect:
                return
            if time.monotonic() - started >= self.stable_after_s:
                attempt = 0
            delay = _backoff(attempt, self.backoff_base_s, self.backoff_max_s)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self, ws, ready: asyncio.Future) -> None:
        reader = asyncio.create_task(self._read_loop(ws))
        watchdog = asyncio.create_task(self._watchdog(ws))
        try:
            if self._token is not None:
                tok = await self._get_token()
                auth = self._send_request(ws, lambda i: m.auth_request(i, tok))
                try:
                    await self._await_answer(auth, reader, self.request_timeout_s)
                except TickwireError as e:
                    self._emit(Event("error", reason="auth", detail=str(e), message=e))
                    raise
            self._connected.set()
            self._emit(Event("connected", detail=self.url))
            self._restore(ws)
            if not ready.done():
                ready.set_result(None)
            await reader
        finally:
            watchdog.cancel()
            if not reader.done():
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass

    async def _await_answer(self, fut: asyncio.Future, reader: asyncio.Task, timeout: float):
        done, _ = await asyncio.wait({fut, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return fut.result()
        if reader in done:
            raise ConnectionLost("connection closed before the answer")
        raise asyncio.TimeoutError("no answer from the server")

    async def _read_loop(self, ws) -> None:
        decode = (
            m.decode_proto
            if self.encoding == "proto"
            else (lambda f: m.decode_json(f, self._decimals_of))
        )
        async for frame in ws:
            try:
                msg = decode(frame)
            except m.UnknownSymbol as e:
                self._count("unsolicited")
                self._emit(Event("error", symbol=e.symbol, reason="unsolicited", detail=str(e)))
                continue
            except m.DecodeError as e:
                # Whatever it was, a message may be lost: only a reconnect
                # (resuming every book where it was) can vouch for them again.
                self._count("decode_errors")
                self._emit(Event("error", reason="decode", detail=str(e)[:200]))
                return
            try:
                self._handle(msg)
            except Exception as e:  # noqa: BLE001 - a bug here must not kill the loop silently
                log.exception("tickwire_client: handling %r failed", type(msg).__name__)
                self._emit(Event("error", reason="internal", detail=repr(e)[:200]))
                return

    async def _watchdog(self, ws) -> None:
        """A snapshot the server owes and does not send within
        `snapshot_timeout_s`: resync that book (a server that never sends
        one keeps the book unverified, and is asked again with backoff)."""
        while True:
            await asyncio.sleep(min(1.0, self.snapshot_timeout_s / 4))
            now = time.monotonic()
            for key, deadline in list(self._awaiting.items()):
                book = self._books.get(key)
                if book is None or book.verified:
                    self._awaiting.pop(key, None)
                elif now > deadline and self._ws is ws:
                    self._awaiting.pop(key, None)
                    self._emit(Event("error", key[0], key[1], book.seq, reason="no_snapshot",
                                     detail=f"no snapshot within {self.snapshot_timeout_s} s"))
                    self._resync(book, "no_snapshot")

    def _disconnected(self, detail: str = "") -> None:
        self._connected.clear()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        for b in self._books.values():
            b.invalidate(keep_resume_point=True)
        for r in self._resyncs.values():
            if r.task is not None:
                r.task.cancel()
        self._resyncs.clear()
        self._awaiting.clear()
        self._internal.clear()
        self._fail_pending(ConnectionLost("connection lost"))
        self._emit(Event("disconnected", detail=detail))

    def _restore(self, ws) -> None:
        """Resubscribe everything held, one request per channel set, with a
        §10 resume for `book` and `trades` where the client holds a point."""
        groups: Dict[tuple, list] = {}
        for sym, chans in self._subs.items():
            groups.setdefault(tuple(sorted(chans)), []).append(sym)
        for chans, syms in groups.items():
            resume = {}
            for sym in syms:
                r = {}
                b = self._books.get((sym, "book"))
                if "book" in chans and b is not None and b.resumable:
                    r["epoch"] = b.epoch
                    r["book"] = b.seq
                ts = self._trade_seq.get(sym)
                if "trades" in chans and ts is not None:
                    ins = self.instruments.get(sym)
                    epoch = r.get("epoch", ins.epoch if ins else None)
                    if epoch is not None and (b is None or not b.resumable or b.epoch == epoch):
                        r["epoch"] = epoch
                        r["trades"] = ts
                if r:
                    resume[sym] = r
            self._restore_group(ws, syms, list(chans), resume, 0)

    def _restore_group(self, ws, syms, chans, resume, attempt) -> None:
        def answered(msg):
            if isinstance(msg, m.Error):
                self._emit(Event("error", reason="request", detail=f"restoring {syms[:5]} {chans}: {msg.code}", message=msg))
                self._spawn(self._later(_backoff(attempt, 0.5, self.backoff_max_s), lambda: self._restore_group(ws, syms, chans, None, attempt + 1)))

        if self._ws is not ws or self._closing:
            return
        self._send_internal(ws, lambda i: m.subscribe_request(i, syms, chans, resume), answered)

    async def _later(self, delay: float, fn: Callable[[], None]) -> None:
        await asyncio.sleep(delay)
        fn()

    # ------------------------------------------------------------------ requests

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def _request(self, build: Callable[[int], str], timeout: Optional[float]):
        timeout = self.request_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._run_task is None:
            raise RuntimeError("call connect() first")
        await asyncio.wait_for(self._connected.wait(), timeout)
        fut = self._send_request(self._ws, build)
        return await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))

    def _send_request(self, ws, build: Callable[[int], str]) -> asyncio.Future:
        req_id = self._take_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        fut.add_done_callback(lambda _: self._pending.pop(req_id, None))
        self._spawn(self._send(ws, build(req_id)))
        return fut

    def _send_internal(self, ws, build: Callable[[int], str], answered: Callable[[Any], None]) -> None:
        req_id = self._take_id()
        self._internal[req_id] = answered
        self._spawn(self._send(ws, build(req_id)))

    async def _send(self, ws, text: str) -> None:
        try:
            await ws.send(text)
        except Exception as e:  # noqa: BLE001 - the read loop sees the close
            log.debug("tickwire_client: send failed: %r", e)

    def _fail_pending(self, exc: Exception) -> None:
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    def _answer(self, req_id: int, msg) -> bool:
        cb = self._internal.pop(req_id, None)
        if cb is not None:
            cb(msg)
            return True
        fut = self._pending.pop(req_id, None)
        if fut is not None and not fut.done():
            if isinstance(msg, m.Error):
                fut.set_exception(TickwireError(msg.code, msg.message, msg.id))
            else:
                fut.set_result(msg)
            return True
        return False

    async def _get_token(self) -> Optional[str]:
        tok = self._token
        if callable(tok):
            tok = tok()
            if inspect.isawaitable(tok):
                tok = await tok
        return tok

    # ------------------------------------------------------------------ messages

    def _decimals_of(self, symbol: str) -> Optional[tuple]:
        ins = self.instruments.get(symbol)
        if ins is not None:
            return (ins.price_decimals, ins.size_decimals)
        for (sym, _), b in self._books.items():
            if sym == symbol and b.resumable:
                return (b.price_decimals, b.size_decimals)
        return None

    def _handle(self, msg) -> None:
        t = type(msg)
        if t is m.Delta:
            self._on_delta(msg)
        elif t is m.Snapshot:
            self._on_snapshot(msg)
        elif t is m.Trade:
            self._on_trade(msg)
        elif t is m.Subscribed:
            self._on_subscribed(msg)
        elif t is m.Unsubscribed:
            self._on_unsubscribed(msg)
        elif t is m.Stale:
            self._on_stale(msg)
        elif t is m.Error:
            known = msg.id != 0 and self._answer(msg.id, msg)
            if not known or msg.code == "unauthorized":
                self._emit(Event("error", reason="server", detail=f"{msg.code}: {msg.message}"[:200], message=msg))
        elif t is m.Authenticated:
            self.authenticated = msg
            self._answer(msg.id, msg)
            self._schedule_refresh(msg)
            self._emit(Event("authenticated", detail=msg.sub, message=msg))

    def _unsolicited(self, symbol: str, what: str) -> None:
        self._count("unsolicited")
        self._emit(Event("error", symbol=symbol, reason="unsolicited", detail=f"{what} for {symbol!r:.40}, not subscribed"))

    def _on_snapshot(self, s: m.Snapshot) -> None:
        book = self._books.get((s.symbol, s.channel))
        if book is None:
            return self._unsolicited(s.symbol, f"snapshot on {s.channel!r:.30}")
        # §1: decimals are set by the feed's snapshot and may change with a
        # new one; the deltas and trades that follow (JSON) are in them.
        self.instruments[s.symbol] = m.Instrument(s.symbol, s.price_decimals, s.size_decimals, s.epoch)
        try:
            book.apply_snapshot(s)
        except BookError as e:
            return self._book_failed(book, e)
        self._awaiting.pop((s.symbol, s.channel), None)
        self._count("snapshots")
        self._emit(Event("book", s.symbol, s.channel, s.seq, book=book, message=s))

    def _on_delta(self, d: m.Delta) -> None:
        book = self._books.get((d.symbol, d.channel))
        if book is None:
            return self._unsolicited(d.symbol, f"delta on {d.channel!r:.30}")
        if not book.verified:
            # Awaiting a snapshot (after a Stale, a resync, or before the
            # first one): deltas until then belong to no book we hold.
            self._count("deltas_ignored")
            return
        try:
            book.apply_delta(d)
        except BookError as e:
            return self._book_failed(book, e)
        self._count("deltas")
        self._emit(Event("book", d.symbol, d.channel, d.seq, book=book, message=d))

    def _book_failed(self, book: Book, err: BookError) -> None:
        self._count(err.reason)
        book.invalidate()
        self._emit(Event("error", book.symbol, book.channel, book.seq, reason=err.reason, detail=err.detail))
        self._resync(book, err.reason)

    def _resync(self, book: Book, reason: str) -> None:
        """Resubscribe one book (§6: a fresh snapshot), backing off when the
        same book keeps failing, so a broken server is not hammered."""
        key = (book.symbol, book.channel)
        r = self._resyncs.setdefault(key, _Resync())
        if r.task is not None and not r.task.done():
            return
        now = time.monotonic()
        if now - r.last > 2 * self.resync_backoff_max_s:
            r.count = 0
        delay = 0.0 if r.count == 0 else _backoff(r.count - 1, 0.1, self.resync_backoff_max_s)
        r.count += 1
        r.last = now + delay
        ws = self._ws

        async def go():
            if delay:
                await asyncio.sleep(delay)
            if self._ws is not ws or ws is None or self._books.get(key) is not book:
                return
            self._count("resyncs")
            self._awaiting[key] = time.monotonic() + self.snapshot_timeout_s
            self._emit(Event("resync", book.symbol, book.channel, book.seq, reason=reason))

            def answered(msg):
                if isinstance(msg, m.Error):
                    # e.g. rate_limited when many books fail at once: try
                    # again, later each time (the backoff above).
                    self._emit(Event("error", book.symbol, book.channel, reason="request", detail=f"resync: {msg.code}", message=msg))
                    if self._books.get(key) is book and not book.verified:
                        self._resync(book, reason)

            self._send_internal(ws, lambda i: m.subscribe_request(i, [book.symbol], [book.channel]), answered)

        r.task = self._spawn(go())

    def _on_trade(self, t: m.Trade) -> None:
        if "trades" not in self._subs.get(t.symbol, ()):
            return self._unsolicited(t.symbol, "trade")
        last = self._trade_seq.get(t.symbol)
        if last is not None:
            if t.seq <= last:
                self._count("trade_seq")
                self._emit(Event("error", t.symbol, "trades", t.seq, reason="trade_seq", detail=f"trade seq {t.seq} after {last}: dropped"))
                return
            if t.seq > last + 1:
                self._emit(Event("trade_gap", t.symbol, "trades", t.seq, detail=str(t.seq - last - 1)))
        self._trade_seq[t.symbol] = t.seq
        ins = self.instruments.get(t.symbol)
        view = TradeView(
            symbol=t.symbol,
            seq=t.seq,
            price_raw=t.price,
            size_raw=t.size,
            price=to_decimal(t.price, ins.price_decimals) if ins else None,
            size=to_decimal(t.size, ins.size_decimals) if ins else None,
            aggressor=t.aggressor,
            trade_id=t.trade_id,
            exchange_ts_ns=t.exchange_ts_ns,
            ingest_ts_ns=t.ingest_ts_ns,
        )
        self._count("trades")
        self._emit(Event("trade", t.symbol, "trades", t.seq, trade=view, message=t))

    def _on_subscribed(self, s: m.Subscribed) -> None:
        for ins in s.instruments:
            self.instruments[ins.symbol] = ins
        resumed = set(s.resumed)
        for sym in s.symbols:
            chans = self._subs.setdefault(sym, set())
            for ch in s.channels:
                key = f"{sym}:{ch}"
                if ch == "trades":
                    if "trades" not in chans or key not in resumed:
                        self._trade_seq[sym] = None
                    elif key in resumed:
                        self._emit(Event("resumed", sym, ch, self._trade_seq.get(sym)))
                    chans.add("trades")
                    continue
                try:
                    channel_depth(ch)
                except ValueError:
                    self._emit(Event("error", sym, ch, reason="unsolicited", detail=f"subscribed to unknown channel {ch!r:.30}"))
                    continue
                for old in [c for c in chans if c != "trades" and c != ch]:
                    chans.discard(old)
                    self._books.pop((sym, old), None)
                chans.add(ch)
                book = self._books.get((sym, ch))
                if book is None:
                    book = Book(sym, ch, allow_crossed=self.allow_crossed, require_prev_seq=self.require_prev_seq)
                    self._books[(sym, ch)] = book
                if key in resumed:
                    try:
                        book.resume()
                        self._emit(Event("resumed", sym, ch, book.seq, book=book))
                    except BookError as e:
                        self._book_failed(book, e)
                else:
                    book.invalidate()  # a snapshot follows
                    self._awaiting[(sym, ch)] = time.monotonic() + self.snapshot_timeout_s
        self._answer(s.id, s)
        self._emit(Event("subscribed", message=s))

    def _on_unsubscribed(self, u: m.Unsubscribed) -> None:
        for sym in u.symbols:
            chans = self._subs.get(sym)
            if chans is None:
                continue
            for ch in u.channels:
                if ch == "trades":
                    chans.discard("trades")
                    self._trade_seq.pop(sym, None)
                elif ch.startswith("book"):
                    for old in [c for c in chans if c != "trades"]:
                        chans.discard(old)
                        self._books.pop((sym, old), None)
                        r = self._resyncs.pop((sym, old), None)
                        if r is not None and r.task is not None:
                            r.task.cancel()
            if not chans:
                del self._subs[sym]
        self._answer(u.id, u)
        self._emit(Event("unsubscribed", message=u))

    def _on_stale(self, s: m.Stale) -> None:
        if s.symbol not in self._subs:
            return self._unsolicited(s.symbol, "stale")
        if s.reason in BOOK_STALE_REASONS:
            for key, b in self._books.items():
                if key[0] == s.symbol:
                    b.invalidate(keep_resume_point=True)
                    if s.reason == "slow_consumer":
                        self._awaiting[key] = time.monotonic() + self.snapshot_timeout_s
                    else:  # §3: the snapshot comes when the feed recovers, whenever
                        self._awaiting.pop(key, None)
        if s.reason == "slow_consumer_trades":
            self._trade_seq[s.symbol] = None
        self._count("stale")
        self._emit(Event("stale", s.symbol, reason=s.reason, detail=str(s.dropped), message=s))

    # ------------------------------------------------------------------ auth refresh

    def _schedule_refresh(self, a: m.Authenticated) -> None:
        if not callable(self._token) or not a.expires_at_ns:
            return
        left_s = a.expires_at_ns / 1e9 - time.time()
        delay = max(1.0, left_s * self.refresh_fraction)
        if self._refresh_task is not None:
            self._refresh_task.cancel()

        async def refresh():
            await asyncio.sleep(delay)
            try:
                await self.authenticate()
            except Exception as e:  # noqa: BLE001
                self._emit(Event("error", reason="auth", detail=f"refresh failed: {e!r}"[:200]))

        self._refresh_task = asyncio.create_task(refresh())

    # ------------------------------------------------------------------ events

    def _emit(self, ev: Event) -> None:
        for kind in (ev.kind, "*"):
            for cb in self._callbacks.get(kind, ()):
                try:
                    r = cb(ev)
                    if inspect.isawaitable(r):
                        self._spawn(r)
                except Exception:  # noqa: BLE001 - a user's callback must not break the client
                    log.exception("tickwire_client: %s callback failed", ev.kind)
        for q in self._queues:
            q.put_nowait(ev)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _as_list(x) -> list:
    return [x] if isinstance(x, str) else list(x)


async def _close_quietly(ws) -> None:
    try:
        await ws.close()
    except Exception:  # noqa: BLE001
        pass
