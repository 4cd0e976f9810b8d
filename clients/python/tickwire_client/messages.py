"""Server messages (PROTOCOL §2, §6) as plain dataclasses, decoded from either
encoding, and the client requests.

Prices and sizes are kept as the wire's fixed-point integers (mantissas);
`decimals.py` turns them into `decimal.Decimal`. Every decoder raises
`DecodeError` on anything that is not a well-formed message: a frame of the
wrong kind, bad protobuf, bad JSON, a missing 1.0 field, a decimal string that
does not fit the symbol's decimals, an integer outside int64/uint64.
Fields added in 1.1 (`channel`, `prev_seq`, `epoch`, `resumed`) default when
absent from JSON (`prev_seq` then is `None`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

from google.protobuf.message import DecodeError as _PbDecodeError

from . import tickwire_pb2 as pb

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
MAX_DECIMALS = 18

BID = "bid"
ASK = "ask"


class DecodeError(ValueError):
    """A frame that is not a valid server message."""


@dataclass(frozen=True)
class Snapshot:
    symbol: str
    channel: str
    seq: int
    epoch: int
    bids: tuple  # ((price, size), ...) best first
    asks: tuple
    price_decimals: int
    size_decimals: int
    checksum: int
    exchange_ts_ns: int = 0
    ingest_ts_ns: int = 0


@dataclass(frozen=True)
class Delta:
    symbol: str
    channel: str
    seq: int
    prev_seq: Optional[int]  # None: a 1.0 server that does not send it
    updates: tuple  # ((side, price, size), ...) in wire order; size 0 removes
    checksum: int
    exchange_ts_ns: int = 0
    ingest_ts_ns: int = 0


@dataclass(frozen=True)
class Trade:
    symbol: str
    seq: int
    price: int
    size: int
    aggressor: str  # "bid", "ask" or ""
    trade_id: str
    exchange_ts_ns: int = 0
    ingest_ts_ns: int = 0


@dataclass(frozen=True)
class Instrument:
    symbol: str
    price_decimals: int
    size_decimals: int
    epoch: int = 0


@dataclass(frozen=True)
class Subscribed:
    id: int
    symbols: tuple
    channels: tuple
    instruments: tuple  # (Instrument, ...)
    resumed: tuple = ()  # ("SYMBOL:channel", ...)


@dataclass(frozen=True)
class Unsubscribed:
    id: int
    symbols: tuple
    channels: tuple


@dataclass(frozen=True)
class Error:
    id: int
    code: str
    message: str


@dataclass(frozen=True)
class Stale:
    symbol: str
    dropped: int
    reason: str


@dataclass(frozen=True)
class Authenticated:
    id: int
    sub: str
    expires_at_ns: int


Message = Union[Snapshot, Delta, Trade, Subscribed, Unsubscribed, Error, Stale, Authenticated]

# (price_decimals, size_decimals) of a symbol, or None when unknown.
DecimalsLookup = Callable[[str], Optional[tuple]]


def canonical_channel(channel: str) -> str:
    """§9: "" in protobuf means "book"."""
    return channel or "book"


# ---------------------------------------------------------------- protobuf

_SIDES = {pb.BID: BID, pb.ASK: ASK}


def decode_proto(frame: bytes) -> Message:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise DecodeError("text frame on a protobuf connection")
    msg = pb.ServerMessage()
    try:
        msg.ParseFromString(bytes(frame))
    except (_PbDecodeError, RuntimeError, ValueError) as e:
        raise DecodeError(f"undecodable protobuf: {e}") from None
    kind = msg.WhichOneof("body")
    if kind is None:
        raise DecodeError("ServerMessage without a body")
    m = getattr(msg, kind)
    if kind == "snapshot":
        _check_decimals(m.price_decimals, m.size_decimals)
        return Snapshot(
            symbol=m.symbol,
            channel=canonical_channel(m.channel),
            seq=m.seq,
            epoch=m.epoch,
            bids=tuple((lv.price, lv.size) for lv in m.bids),
            asks=tuple((lv.price, lv.size) for lv in m.asks),
            price_decimals=m.price_decimals,
            size_decimals=m.size_decimals,
            checksum=m.checksum,
            exchange_ts_ns=m.exchange_ts_ns,
            ingest_ts_ns=m.ingest_ts_ns,
        )
    if kind == "delta":
        ups = []
        for u in m.updates:
            side = _SIDES.get(u.side)
            if side is None:
                raise DecodeError(f"level update with side {u.side}")
            ups.append((side, u.price, u.size))
        return Delta(
            symbol=m.symbol,
            channel=canonical_channel(m.channel),
            seq=m.seq,
            # proto3 cannot tell 0 from absent; no 1.1 delta has prev_seq 0
            # (every book starts with a snapshot of seq >= 1).
            prev_seq=m.prev_seq if m.prev_seq != 0 else None,
            updates=tuple(ups),
            checksum=m.checksum,
            exchange_ts_ns=m.exchange_ts_ns,
            ingest_ts_ns=m.ingest_ts_ns,
        )
    if kind == "trade":
        return Trade(
            symbol=m.symbol,
            seq=m.seq,
            price=m.price,
            size=m.size,
            aggressor=_SIDES.get(m.aggressor, ""),
            trade_id=m.trade_id,
            exchange_ts_ns=m.exchange_ts_ns,
            ingest_ts_ns=m.ingest_ts_ns,
        )
    if kind == "subscribed":
        return Subscribed(
            id=m.id,
            symbols=tuple(m.symbols),
            channels=tuple(m.channels),
            instruments=tuple(
                Instrument(i.symbol, _dec(i.price_decimals), _dec(i.size_decimals), i.epoch)
                for i in m.instruments
            ),
            resumed=tuple(m.resumed),
        )
    if kind == "unsubscribed":
        return Unsubscribed(m.id, tuple(m.symbols), tuple(m.channels))
    if kind == "error":
        return Error(m.id, m.code, m.message)
    if kind == "stale":
        return Stale(m.symbol, m.dropped, m.reason)
    if kind == "authenticated":
        return Authenticated(m.id, m.sub, m.expires_at_ns)
    raise DecodeError(f"unknown message {kind}")  # pragma: no cover (schema has no other)


# ---------------------------------------------------------------- JSON

_DECIMAL_RE = re.compile(r"^(-?)([0-9]+)(?:\.([0-9]+))?$")


def parse_decimal(text: object, decimals: int, *, signed: bool) -> int:
    """§1 decimal string -> mantissa at `decimals`. Extra fractional digits
    are accepted only if zeros; never rounds."""
    if not isinstance(text, str) or len(text) > 64:
        raise DecodeError(f"not a decimal string: {text!r:.40}")
    m = _DECIMAL_RE.match(text)
    if m is None or (m.group(1) and not signed):
        raise DecodeError(f"bad decimal {text!r:.40}")
    frac = m.group(3) or ""
    if len(frac) > decimals:
        if frac[decimals:].strip("0"):
            raise DecodeError(f"{text!r:.40} has more than {decimals} decimals")
        frac = frac[:decimals]
    mant = int(m.group(2) + frac.ljust(decimals, "0"))
    if m.group(1):
        mant = -mant
    if not INT64_MIN <= mant <= INT64_MAX:
        raise DecodeError(f"{text!r:.40} outside int64")
    return mant


def _dec(d: object) -> int:
    if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= MAX_DECIMALS:
        raise DecodeError(f"decimals {d!r:.20} outside 0..18")
    return d


def _check_decimals(p: int, s: int) -> None:
    _dec(p)
    _dec(s)


def _uint(obj: dict, key: str, default: Optional[int] = None) -> int:
    v = obj.get(key)
    if v is None:
        if default is None:
            raise DecodeError(f"{key} missing")
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= UINT64_MAX:
        raise DecodeError(f"{key}: not an unsigned integer: {v!r:.30}")
    return v


def _str(obj: dict, key: str, default: Optional[str] = None) -> str:
    v = obj.get(key, default)
    if not isinstance(v, str):
        raise DecodeError(f"{key}: not a string")
    return v


def _strs(obj: dict, key: str, default: Optional[list] = None) -> tuple:
    v = obj.get(key, default)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise DecodeError(f"{key}: not a list of strings")
    return tuple(v)


def _levels(v: object, dec: tuple, key: str) -> list:
    if not isinstance(v, list):
        raise DecodeError(f"{key}: not a list")
    out = []
    for lv in v:
        if not isinstance(lv, list) or len(lv) != 2:
            raise DecodeError(f"{key}: a level is not a [price, size] pair")
        out.append((parse_decimal(lv[0], dec[0], signed=True), parse_decimal(lv[1], dec[1], signed=False)))
    return out


def decode_json(frame: str, decimals_of: DecimalsLookup) -> Message:
    """`decimals_of(symbol)` gives the decimals for deltas and trades (which
    carry none); an unknown symbol there is a DecodeError."""
    if not isinstance(frame, str):
        raise DecodeError("binary frame on a JSON connection")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError) as e:
        raise DecodeError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DecodeError("not a JSON object")
    kind = obj.get("type")
    try:
        return _decode_json_obj(kind, obj, decimals_of)
    except (TypeError, AttributeError) as e:
        raise DecodeError(f"malformed {kind!r:.20}: {e}") from None


def _decode_json_obj(kind: object, obj: dict, decimals_of: DecimalsLookup) -> Message:
    if kind == "snapshot":
        dec = (_dec(obj.get("price_decimals")), _dec(obj.get("size_decimals")))
        return Snapshot(
            symbol=_str(obj, "symbol"),
            channel=canonical_channel(_str(obj, "channel", "book")),
            seq=_uint(obj, "seq"),
            epoch=_uint(obj, "epoch", 0),
            bids=tuple(_levels(obj.get("bids"), dec, "bids")),
            asks=tuple(_levels(obj.get("asks"), dec, "asks")),
            price_decimals=dec[0],
            size_decimals=dec[1],
            checksum=_uint(obj, "checksum"),
            exchange_ts_ns=_uint(obj, "exchange_ts_ns", 0),
            ingest_ts_ns=_uint(obj, "ingest_ts_ns", 0),
        )
    if kind in ("delta", "trade"):
        symbol = _str(obj, "symbol")
        dec = decimals_of(symbol)
        if dec is None:
            raise UnknownSymbol(symbol, kind)
    if kind == "delta":
        ups = [(BID, p, s) for p, s in _levels(obj.get("bids"), dec, "bids")]
        ups += [(ASK, p, s) for p, s in _levels(obj.get("asks"), dec, "asks")]
        prev = obj.get("prev_seq")
        return Delta(
            symbol=symbol,
            channel=canonical_channel(_str(obj, "channel", "book")),
            seq=_uint(obj, "seq"),
            prev_seq=None if prev is None else _uint(obj, "prev_seq"),
            updates=tuple(ups),
            checksum=_uint(obj, "checksum"),
            exchange_ts_ns=_uint(obj, "exchange_ts_ns", 0),
            ingest_ts_ns=_uint(obj, "ingest_ts_ns", 0),
        )
    if kind == "trade":
        aggr = _str(obj, "aggressor", "")
        if aggr not in ("bid", "ask", ""):
            raise DecodeError(f"aggressor {aggr!r:.20}")
        return Trade(
            symbol=symbol,
            seq=_uint(obj, "seq"),
            price=parse_decimal(obj.get("price"), dec[0], signed=True),
            size=parse_decimal(obj.get("size"), dec[1], signed=False),
            aggressor=aggr,
            trade_id=_str(obj, "trade_id", ""),
            exchange_ts_ns=_uint(obj, "exchange_ts_ns", 0),
            ingest_ts_ns=_uint(obj, "ingest_ts_ns", 0),
        )
    if kind == "subscribed":
        ins = obj.get("instruments")
        if not isinstance(ins, list) or not all(isinstance(i, dict) for i in ins):
            raise DecodeError("instruments: not a list of objects")
        return Subscribed(
            id=_uint(obj, "id"),
            symbols=_strs(obj, "symbols"),
            channels=_strs(obj, "channels"),
            instruments=tuple(
                Instrument(_str(i, "symbol"), _dec(i.get("price_decimals")), _dec(i.get("size_decimals")), _uint(i, "epoch", 0))
                for i in ins
            ),
            resumed=_strs(obj, "resumed", []),
        )
    if kind == "unsubscribed":
        return Unsubscribed(_uint(obj, "id"), _strs(obj, "symbols"), _strs(obj, "channels"))
    if kind == "error":
        return Error(_uint(obj, "id", 0), _str(obj, "code"), _str(obj, "message", ""))
    if kind == "stale":
        return Stale(_str(obj, "symbol"), _uint(obj, "dropped", 0), _str(obj, "reason"))
    if kind == "authenticated":
        return Authenticated(_uint(obj, "id"), _str(obj, "sub"), _uint(obj, "expires_at_ns", 0))
    raise DecodeError(f"unknown message type {kind!r:.30}")


class UnknownSymbol(DecodeError):
    """A JSON delta or trade for a symbol whose decimals the client does not
    know (it never subscribed to it): the frame is readable, the message
    unsolicited."""

    def __init__(self, symbol: str, kind: str):
        super().__init__(f"{kind} for {symbol!r:.40}, which is not subscribed")
        self.symbol = symbol


# ---------------------------------------------------------------- requests


def subscribe_request(req_id: int, symbols, channels, resume: Optional[dict] = None) -> str:
    req = {"op": "subscribe", "symbols": list(symbols), "channels": list(channels), "id": req_id}
    if resume:
        req["resume"] = resume
    return json.dumps(req, separators=(",", ":"))


def unsubscribe_request(req_id: int, symbols, channels) -> str:
    return json.dumps(
        {"op": "unsubscribe", "symbols": list(symbols), "channels": list(channels), "id": req_id},
        separators=(",", ":"),
    )


def auth_request(req_id: int, token: str) -> str:
    return json.dumps({"op": "auth", "token": token, "id": req_id}, separators=(",", ":"))
