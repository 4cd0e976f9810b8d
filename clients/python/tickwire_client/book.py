"""One order book per (symbol, channel), kept from snapshots and deltas, and
vouched for on every message (PROTOCOL §4, §5, §9).

A `Book` holds levels as fixed-point integers (price -> size per side). It is
*verified* only while every message since the last snapshot (or resume)
followed on (`prev_seq` == the seq held; on `book` also `seq` == held + 1)
and left it with the server's checksum. Anything else raises `BookError` and
leaves the book unverified; the client then resyncs it. An unverified book is
never exposed: `snapshot()` returns None and the level accessors raise
`BookNotVerified`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import re
import struct
import zlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Optional

from .messages import ASK, BID, Delta, Snapshot

CHECKSUM_LEVELS = 10
_LEVEL = struct.Struct("<qq")
_CHANNEL_RE = re.compile(r"^book(?:\.([1-9][0-9]*))?(?:@([0-9]+)ms)?$")


class BookError(Exception):
    """A message that the held book cannot take: the book is now unverified.
    `reason` is one of: checksum, seq_gap, seq_backwards, bad_snapshot,
    bad_delta, not_synced."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BookNotVerified(Exception):
    """The book cannot be vouched for right now (awaiting a snapshot)."""


def channel_depth(channel: str) -> Optional[int]:
    """N of `book.N` / `book.N@Tms`; None for full depth. Raises ValueError
    on a name that is not a book channel of §9."""
    m = _CHANNEL_RE.match(channel)
    if m is None:
        raise ValueError(f"not a book channel: {channel!r}")
    return int(m.group(1)) if m.group(1) else None


def checksum(bids, asks) -> int:
    """§5: CRC-32 over the top 10 bids (best first) then the top 10 asks, each
    level as price then size, little-endian int64."""
    crc = 0
    for price, size in bids[:CHECKSUM_LEVELS]:
        crc = zlib.crc32(_LEVEL.pack(price, size), crc)
    for price, size in asks[:CHECKSUM_LEVELS]:
        crc = zlib.crc32(_LEVEL.pack(price, size), crc)
    return crc


def to_decimal(mantissa: int, decimals: int) -> Decimal:
    return Decimal(mantissa).scaleb(-decimals)


@dataclass(frozen=True)
class BookView:
    """A verified book at one seq. Levels best first; `*_raw` are the
    fixed-point mantissas, the others `Decimal`s."""

    symbol: str
    channel: str
    seq: int
    epoch: int
    price_decimals: int
    size_decimals: int
    bids_raw: tuple
    asks_raw: tuple
    checksum: int

    @property
    def bids(self) -> list:
        return [(to_decimal(p, self.price_decimals), to_decimal(s, self.size_decimals)) for p, s in self.bids_raw]

    @property
    def asks(self) -> list:
        return [(to_decimal(p, self.price_decimals), to_decimal(s, self.size_decimals)) for p, s in self.asks_raw]

    def best_bid(self) -> Optional[tuple]:
        b = self.bids_raw[:1]
        return (to_decimal(b[0][0], self.price_decimals), to_decimal(b[0][1], self.size_decimals)) if b else None

    def best_ask(self) -> Optional[tuple]:
        a = self.asks_raw[:1]
        return (to_decimal(a[0][0], self.price_decimals), to_decimal(a[0][1], self.size_decimals)) if a else None


class Book:
    """The client's copy of one (symbol, channel) book.

    # Invariants
    - `verified` implies: the levels equal the server's book at `seq`
      (the last message's checksum matched them), sizes > 0, and for
      `book.N` at most N levels per side.
    - `seq` never decreases within one `epoch`.
    """

    def __init__(self, symbol: str, channel: str = "book", *, allow_crossed: bool = False,
                 require_prev_seq: bool = True):
        self.symbol = symbol
        self.channel = channel
        self.depth = channel_depth(channel)
        self.allow_crossed = allow_crossed
        self.require_prev_seq = require_prev_seq
        self.seq = 0
        self.epoch = 0
        self.price_decimals = 0
        self.size_decimals = 0
        self._bids = _Side(desc=True)
        self._asks = _Side(desc=False)
        self._verified = False
        # The levels held are the server's book at `seq` (a resumable point)
        # even though the book is not live: set across a reconnect or a Stale.
        self._consistent = False

    # ------------------------------------------------------------ state

    @property
    def verified(self) -> bool:
        return self._verified

    @property
    def resumable(self) -> bool:
        """True when the levels held are the server's book at `seq` (so a
        §10 resume from `seq` can continue them)."""
        return self._consistent

    def invalidate(self, *, keep_resume_point: bool = False) -> None:
        """Stop vouching for the book (a Stale, a disconnect, a resync)."""
        self._verified = False
        if not keep_resume_point:
            self._consistent = False

    def resume(self) -> None:
        """The server resumed this book from `seq` (§10 `resumed`)."""
        if not self._consistent:
            raise BookError("not_synced", "resumed without a consistent book")
        self._verified = True

    # ------------------------------------------------------------ input

    def apply_snapshot(self, snap: Snapshot) -> None:
        self._verified = False
        self._consistent = False
        if snap.epoch == self.epoch and snap.seq < self.seq:
            raise BookError("seq_backwards", f"snapshot seq {snap.seq} < held {self.seq} in epoch {snap.epoch}")
        bids, asks = list(snap.bids), list(snap.asks)
        for side, levels, desc in ((BID, bids, True), (ASK, asks, False)):
            for i, (price, size) in enumerate(levels):
                if size <= 0:
                    raise BookError("bad_snapshot", f"{side} size {size} at {price}")
                if i and (price >= levels[i - 1][0] if desc else price <= levels[i - 1][0]):
                    raise BookError("bad_snapshot", f"{side}s not strictly {'descending' if desc else 'ascending'} at {price}")
            if self.depth is not None and len(levels) > self.depth:
                raise BookError("bad_snapshot", f"{len(levels)} {side}s on {self.channel}")
        if bids and asks and bids[0][0] >= asks[0][0] and not self.allow_crossed:
            raise BookError("bad_snapshot", f"crossed: bid {bids[0][0]} >= ask {asks[0][0]}")
        got = checksum(bids, asks)
        if got != snap.checksum:
            raise BookError("checksum", f"snapshot seq {snap.seq}: computed {got}, server {snap.checksum}")
        self._bids = _Side(True, bids)
        self._asks = _Side(False, asks)
        self.seq = snap.seq
        self.epoch = snap.epoch
        self.price_decimals = snap.price_decimals
        self.size_decimals = snap.size_decimals
        self._verified = True
        self._consistent = True

    def apply_delta(self, d: Delta) -> None:
        if not self._verified:
            raise BookError("not_synced", f"delta seq {d.seq} while the book is not synced")
        self._verified = False
        self._consistent = False
        if d.prev_seq is None:
            if self.require_prev_seq:
                raise BookError("bad_delta", f"delta seq {d.seq} without prev_seq")
        elif d.prev_seq != self.seq:
            kind = "seq_backwards" if d.prev_seq < self.seq else "seq_gap"
            raise BookError(kind, f"delta prev_seq {d.prev_seq} seq {d.seq}, held {self.seq}")
        if d.seq <= self.seq:
            raise BookError("seq_backwards", f"delta seq {d.seq} <= held {self.seq}")
        if self.channel == "book" and d.seq != self.seq + 1:
            raise BookError("seq_gap", f"delta seq {d.seq} after {self.seq} on book")
        # In place: a failure below leaves the book unverified and not
        # resumable, so its levels no longer matter until the next snapshot.
        bids, asks = self._bids, self._asks
        for side, price, size in d.updates:
            book = bids if side == BID else asks
            if size < 0:
                raise BookError("bad_delta", f"{side} size {size} at {price}")
            book.set(price, size)
        if self.depth is not None and (len(bids) > self.depth or len(asks) > self.depth):
            raise BookError("bad_delta", f"{len(bids)} bids / {len(asks)} asks on {self.channel}")
        got = checksum(bids.top(CHECKSUM_LEVELS), asks.top(CHECKSUM_LEVELS))
        if got != d.checksum:
            raise BookError("checksum", f"delta seq {d.seq}: computed {got}, server {d.checksum}")
        self.seq = d.seq
        self._verified = True
        self._consistent = True

    # ------------------------------------------------------------ output

    def _check(self) -> None:
        if not self._verified:
            raise BookNotVerified(f"{self.symbol} {self.channel} is not verified (awaiting a snapshot)")

    def bids_raw(self, depth: Optional[int] = None) -> list:
        self._check()
        return self._bids.top(depth)

    def asks_raw(self, depth: Optional[int] = None) -> list:
        self._check()
        return self._asks.top(depth)

    def bids(self, depth: Optional[int] = None) -> list:
        return [(to_decimal(p, self.price_decimals), to_decimal(s, self.size_decimals)) for p, s in self.bids_raw(depth)]

    def asks(self, depth: Optional[int] = None) -> list:
        return [(to_decimal(p, self.price_decimals), to_decimal(s, self.size_decimals)) for p, s in self.asks_raw(depth)]

    def snapshot(self, depth: Optional[int] = None) -> Optional[BookView]:
        """An immutable view of the verified book, or None while unverified."""
        if not self._verified:
            return None
        return BookView(
            symbol=self.symbol,
            channel=self.channel,
            seq=self.seq,
            epoch=self.epoch,
            price_decimals=self.price_decimals,
            size_decimals=self.size_decimals,
            bids_raw=tuple(self._bids.top(depth)),
            asks_raw=tuple(self._asks.top(depth)),
            checksum=checksum(self._bids.top(CHECKSUM_LEVELS), self._asks.top(CHECKSUM_LEVELS)),
        )

    def __repr__(self) -> str:
        state = "verified" if self._verified else "unverified"
        return f"<Book {self.symbol} {self.channel} seq={self.seq} epoch={self.epoch} {state}>"


class _Side:
    """One side's levels: price -> size, and the prices kept sorted
    ascending (bisect), so a delta costs O(updates x log n) plus a memmove and
    the top 10 is a slice."""

    __slots__ = ("desc", "sizes", "prices")

    def __init__(self, desc: bool, levels=()):
        self.desc = desc
        self.sizes = dict(levels)
        self.prices = sorted(self.sizes)

    def set(self, price: int, size: int) -> None:
        if size == 0:
            if self.sizes.pop(price, None) is not None:
                del self.prices[bisect.bisect_left(self.prices, price)]
        else:
            if price not in self.sizes:
                bisect.insort(self.prices, price)
            self.sizes[price] = size

    def top(self, n: Optional[int]) -> list:
        if self.desc:
            ps = self.prices[::-1] if n is None else self.prices[: -n - 1 : -1] if n else []
        else:
            ps = self.prices if n is None else self.prices[:n]
        return [(p, self.sizes[p]) for p in ps]

    def __len__(self) -> int:
        return len(self.sizes)
