"""Book and decoding, without sockets: checksum vectors shared with the
engine's src/book/checksum.rs, the checks a Book makes on every message."""

from decimal import Decimal

import pytest

from tickwire_client import Book, BookError, BookNotVerified, channel_depth, checksum, parse_decimal
from tickwire_client import messages as m
from tickwire_client import tickwire_pb2 as pb


def test_checksum_vectors_match_the_engine():
    assert checksum([], []) == 0
    assert checksum([(3000050, 12500)], [(3000100, 5000)]) == 3022377490
    bids = [(100 - i, i + 1) for i in range(12)]
    asks = [(101 + i, 2 * (i + 1)) for i in range(12)]
    assert checksum(bids[:10], asks[:10]) == 2837002365
    assert checksum([(-5, 7), (-10, 1)], [(-3, 9)]) == 2328814548
    assert checksum([], [(42, 1)]) == 3281881754
    assert checksum([(2**63 - 1, 2**63 - 1), (-(2**63), 1)], []) == 2436750542


def snap(bids, asks, seq=1, channel="book", epoch=1, csum=None):
    return m.Snapshot("X", channel, seq, epoch, tuple(bids), tuple(asks), 2, 4,
                      checksum(bids[:10], asks[:10]) if csum is None else csum)


def delta(book, seq, ups, prev=None, csum=None):
    bids = {p: s for p, s in book.bids_raw()}
    asks = {p: s for p, s in book.asks_raw()}
    for side, p, s in ups:
        d = bids if side == "bid" else asks
        d.pop(p, None) if s == 0 else d.__setitem__(p, s)
    c = checksum(sorted(bids.items(), reverse=True)[:10], sorted(asks.items())[:10])
    return m.Delta("X", book.channel, seq, seq - 1 if prev is None else prev, tuple(ups), c if csum is None else csum)


def test_snapshot_then_deltas_and_decimals():
    b = Book("X")
    assert not b.verified and b.snapshot() is None
    with pytest.raises(BookNotVerified):
        b.bids()
    b.apply_snapshot(snap([(10050, 10000), (10000, 5)], [(10100, 1)]))
    assert b.verified
    b.apply_delta(delta(b, 2, [("bid", 10050, 0), ("ask", 10200, 30000)]))
    v = b.snapshot()
    assert v.seq == 2 and v.bids_raw == ((10000, 5),) and v.asks_raw == ((10100, 1), (10200, 30000))
    assert v.asks[1] == (Decimal("102.00"), Decimal("3.0000"))
    assert str(v.best_bid()[0]) == "100.00"


@pytest.mark.parametrize("bids,asks", [
    ([(10, 1), (11, 1)], [(20, 1)]),        # bids ascending
    ([(10, 1)], [(21, 1), (20, 1)]),        # asks descending
    ([(10, 1), (10, 2)], [(20, 1)]),        # duplicate price
    ([(10, 0)], [(20, 1)]),                 # zero size
    ([(10, 1)], [(20, -1)]),                # negative size
    ([(20, 1)], [(10, 1)]),                 # crossed
    ([(20, 1)], [(20, 1)]),                 # locked
])
def test_bad_snapshots_are_refused(bids, asks):
    b = Book("X")
    with pytest.raises(BookError) as e:
        b.apply_snapshot(snap(bids, asks))
    assert e.value.reason == "bad_snapshot"
    assert not b.verified and b.snapshot() is None


def test_crossed_allowed_when_asked():
    b = Book("X", allow_crossed=True)
    b.apply_snapshot(snap([(20, 1)], [(10, 1)]))
    assert b.verified


def test_snapshot_checksum_and_depth():
    b = Book("X")
    with pytest.raises(BookError, match="checksum"):
        b.apply_snapshot(snap([(10, 1)], [(20, 1)], csum=1))
    b5 = Book("X", "book.2@100ms")
    with pytest.raises(BookError, match="bad_snapshot"):
        b5.apply_snapshot(snap([(10, 1), (9, 1), (8, 1)], [(20, 1)], channel="book.2@100ms"))


@pytest.mark.parametrize("seq,prev,reason", [(3, 2, "seq_gap"), (1, 0, "seq_backwards"), (1, 1, "seq_backwards"), (3, 1, "seq_gap"), (2, 2, "seq_gap")])
def test_sequence_checks(seq, prev, reason):
    b = Book("X")
    b.apply_snapshot(snap([(10, 1)], [(20, 1)], seq=1))
    with pytest.raises(BookError) as e:
        b.apply_delta(delta(b, seq, [("bid", 9, 1)], prev=prev))
    assert e.value.reason == reason
    assert not b.verified and not b.resumable


def test_delta_checksum_mismatch_and_negative_size():
    b = Book("X")
    b.apply_snapshot(snap([(10, 1)], [(20, 1)]))
    with pytest.raises(BookError, match="checksum"):
        b.apply_delta(delta(b, 2, [("bid", 9, 1)], csum=12345))
    b.apply_snapshot(snap([(10, 1)], [(20, 1)], seq=3))
    with pytest.raises(BookError, match="bad_delta"):
        b.apply_delta(m.Delta("X", "book", 4, 3, (("bid", 9, -1),), 0))


def test_delta_without_prev_seq():
    b = Book("X")
    b.apply_snapshot(snap([(10, 1)], [(20, 1)]))
    d = delta(b, 2, [("bid", 9, 1)])
    with pytest.raises(BookError, match="without prev_seq"):
        b.apply_delta(m.Delta(d.symbol, d.channel, d.seq, None, d.updates, d.checksum))
    lax = Book("X", require_prev_seq=False)
    lax.apply_snapshot(snap([(10, 1)], [(20, 1)]))
    lax.apply_delta(m.Delta(d.symbol, d.channel, d.seq, None, d.updates, d.checksum))
    assert lax.verified and lax.seq == 2


def test_derived_channel_prev_seq_may_skip_and_depth_is_kept():
    b = Book("X", "book.2@100ms")
    b.apply_snapshot(snap([(10, 1), (9, 1)], [(20, 1)], seq=5, channel="book.2@100ms"))
    b.apply_delta(delta(b, 9, [("bid", 8, 1), ("bid", 9, 0)], prev=5))  # conflated: 6..9 merged
    assert b.seq == 9 and b.bids_raw() == [(10, 1), (8, 1)]
    with pytest.raises(BookError, match="bad_delta"):
        b.apply_delta(delta(b, 10, [("bid", 7, 1)], prev=9))  # a third level on book.2


def test_new_epoch_may_lower_seq_same_epoch_may_not():
    b = Book("X")
    b.apply_snapshot(snap([(10, 1)], [(20, 1)], seq=50, epoch=1))
    b.apply_snapshot(snap([(10, 1)], [(20, 1)], seq=3, epoch=2))
    assert b.verified and b.seq == 3
    with pytest.raises(BookError, match="seq_backwards"):
        b.apply_snapshot(snap([(10, 1)], [(20, 1)], seq=2, epoch=2))


def test_channel_names():
    assert channel_depth("book") is None
    assert channel_depth("book.10") == 10
    assert channel_depth("book.5@100ms") == 5
    assert channel_depth("book@20ms") is None
    for bad in ("trades", "book.0", "book.", "bookx", "book@ms"):
        with pytest.raises(ValueError):
            channel_depth(bad)


def test_parse_decimal():
    assert parse_decimal("30000.50", 2, signed=True) == 3000050
    assert parse_decimal("1.2500", 2, signed=False) == 125
    assert parse_decimal("30000", 0, signed=True) == 30000
    assert parse_decimal("-1.5", 2, signed=True) == -150
    for bad, d in (("100.001", 2), ("1e5", 2), ("+1", 2), (" 1", 2), ("1.", 2), (".5", 2), ("-1", None), ("99999999999999999999", 0)):
        with pytest.raises(m.DecodeError):
            parse_decimal(bad, d or 2, signed=d is not None)


def test_decode_errors():
    for frame in (b"\xff\xff\xff", b""):  # garbage, an empty oneof
        with pytest.raises(m.DecodeError):
            m.decode_proto(frame)
    with pytest.raises(m.DecodeError):
        m.decode_proto("text")
    for frame in ("not json", "[1]", '{"type":"nope"}', '{"type":"snapshot"}', b"{}",
                  '{"type":"snapshot","symbol":"X","seq":-1,"bids":[],"asks":[],"price_decimals":2,"size_decimals":2,"checksum":0}',
                  '{"type":"snapshot","symbol":"X","seq":1,"bids":[["1.00"]],"asks":[],"price_decimals":2,"size_decimals":2,"checksum":0}',
                  '{"type":"snapshot","symbol":"X","seq":1,"bids":[],"asks":[],"price_decimals":19,"size_decimals":2,"checksum":0}'):
        with pytest.raises(m.DecodeError):
            m.decode_json(frame, lambda s: (2, 2))
    with pytest.raises(m.UnknownSymbol):
        m.decode_json('{"type":"trade","symbol":"Y","seq":1,"price":"1","size":"1"}', lambda s: None)


def test_proto_roundtrip_of_1_1_fields():
    msg = pb.ServerMessage(delta=pb.BookDelta(symbol="X", seq=7, prev_seq=5, channel="book.10@100ms", checksum=9,
                                              updates=[pb.LevelUpdate(side=pb.ASK, price=-3, size=0)]))
    d = m.decode_proto(msg.SerializeToString())
    assert (d.seq, d.prev_seq, d.channel, d.updates) == (7, 5, "book.10@100ms", (("ask", -3, 0),))
    s = m.decode_proto(pb.ServerMessage(snapshot=pb.BookSnapshot(symbol="X", seq=1)).SerializeToString())
    assert s.channel == "book" and s.bids == ()


def test_random_deltas_against_a_naive_model():
    import random

    rng = random.Random(42)
    model = {"bid": {100 - i: 1 for i in range(15)}, "ask": {101 + i: 1 for i in range(15)}}
    b = Book("X")
    b.apply_snapshot(snap(sorted(model["bid"].items(), reverse=True), sorted(model["ask"].items())))
    for seq in range(2, 2000):
        ups = []
        for _ in range(rng.randint(1, 5)):
            side = rng.choice(("bid", "ask"))
            price = rng.randint(50, 100) if side == "bid" else rng.randint(101, 150)
            size = 0 if rng.random() < 0.4 else rng.randint(1, 9)
            ups.append((side, price, size))
        for side, price, size in ups:
            model[side].pop(price, None) if size == 0 else model[side].__setitem__(price, size)
        bids, asks = sorted(model["bid"].items(), reverse=True), sorted(model["ask"].items())
        b.apply_delta(m.Delta("X", "book", seq, seq - 1, tuple(ups), checksum(bids[:10], asks[:10])))
        assert b.bids_raw() == bids and b.asks_raw() == asks
        assert b.bids_raw(3) == bids[:3] and b.asks_raw(3) == asks[:3]
