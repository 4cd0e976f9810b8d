//! Tests of the derived views: examples, then property tests that drive a
//! [`BookView`] the way the market thread will (module doc of `derived`)
//! with random books, deltas, polls, book replacements and subscribers
//! joining at random points, and check each subscriber's book against the
//! full book after every message.

use proptest::prelude::*;

use super::*;
use crate::book::book::{MAX_LEVELS_PER_SIDE, Side, UpdateScratch};
use crate::book::checksum::checksum_levels;

fn lv(price: i64, size: i64) -> pb::Level {
    pb::Level { price, size }
}

fn up(side: Side, price: i64, size: i64) -> pb::LevelUpdate {
    pb::LevelUpdate {
        side: side.to_pb() as i32,
        price,
        size,
    }
}

fn depth(n: usize) -> Depth {
    Depth::new(n).unwrap()
}

/// Bids 100, 99, … and asks 101, 102, …, `n` each, size 10.
fn ladder(n: i64) -> OrderBook {
    let bids: Vec<_> = (0..n).map(|i| lv(100 - i, 10)).collect();
    let asks: Vec<_> = (0..n).map(|i| lv(101 + i, 10)).collect();
    OrderBook::from_levels(&bids, &asks).unwrap()
}

/// The market's side of a delta: capture, then apply.
fn apply(book: &mut OrderBook, changes: &mut LevelChanges, updates: &[pb::LevelUpdate]) {
    changes.capture(book, updates);
    book.apply_updates(updates, MAX_LEVELS_PER_SIDE, &mut UpdateScratch::default())
        .unwrap();
}

/// The market's side of a delta for views that need no capture: apply it,
/// hand the updates on.
fn applied(book: &mut OrderBook, updates: &[pb::LevelUpdate]) -> Vec<pb::LevelUpdate> {
    book.apply_updates(updates, MAX_LEVELS_PER_SIDE, &mut UpdateScratch::default())
        .unwrap();
    updates.to_vec()
}

/// A subscriber of a derived channel: its book and the seq it holds.
#[derive(Debug, Clone)]
struct Client {
    book: OrderBook,
    seq: u64,
}

impl Client {
    fn from_snapshot(s: &ViewSnapshot) -> Client {
        let book = OrderBook::from_levels(&s.bids, &s.asks).unwrap();
        assert_eq!(s.checksum, book.checksum(), "snapshot checksum");
        Client { book, seq: s.seq }
    }

    /// Applies a delta as a client does, checking that it follows on and that
    /// every update changes the book (nothing sent for nothing: no removal of
    /// an absent level, no size it already has, one update per level).
    fn apply(&mut self, d: &ViewDelta<'_>) {
        assert_eq!(d.prev_seq, self.seq, "prev_seq is the seq held");
        assert!(d.seq > d.prev_seq);
        assert!(!d.updates.is_empty(), "an empty delta is not sent");
        for (i, u) in d.updates.iter().enumerate() {
            let side = Side::from_pb(u.side).expect("a side");
            assert!(
                !d.updates[..i]
                    .iter()
                    .any(|v| v.side == u.side && v.price == u.price),
                "one update per level"
            );
            let held = self.book.size_at(side, u.price);
            if u.size == 0 {
                assert!(held.is_some(), "removal of a level the client holds");
            } else {
                assert!(u.size > 0);
                assert_ne!(held, Some(u.size), "an update that changes nothing");
            }
            self.book.apply(side, u.price, u.size);
        }
        self.seq = d.seq;
        assert_eq!(d.checksum, self.book.checksum(), "checksum after the delta");
    }
}

/// What a subscriber of `channel` must hold when up to date with `full`.
fn truth(channel: Channel, full: &OrderBook) -> (Vec<pb::Level>, Vec<pb::Level>) {
    match channel.depth() {
        Some(n) => (
            full.top(Side::Bid, n.get()).collect(),
            full.top(Side::Ask, n.get()).collect(),
        ),
        None => (
            full.snapshot_levels(Side::Bid),
            full.snapshot_levels(Side::Ask),
        ),
    }
}

fn holds(client: &Client, channel: Channel, full: &OrderBook) -> bool {
    let (bids, asks) = truth(channel, full);
    client.book.snapshot_levels(Side::Bid) == bids && client.book.snapshot_levels(Side::Ask) == asks
}

#[test]
fn top_n_removes_what_falls_out_and_inserts_what_enters_with_its_size() {
    let mut full = ladder(5);
    let mut view = TopN::new(depth(3), 1, &full);
    assert_eq!(
        view.levels(Side::Bid),
        &[lv(100, 10), lv(99, 10), lv(98, 10)]
    );
    // A new best bid pushes 98 out.
    let u = applied(&mut full, &[up(Side::Bid, 101, 4)]);
    let d = view.handle_delta(2, &u, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (2, 1));
    assert_eq!(d.updates, &[up(Side::Bid, 101, 4), up(Side::Bid, 98, 0)]);
    // Removing the best bid brings 98 back, with its full size.
    let u = applied(&mut full, &[up(Side::Bid, 101, 0)]);
    let d = view.handle_delta(3, &u, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (3, 2));
    assert_eq!(d.updates, &[up(Side::Bid, 101, 0), up(Side::Bid, 98, 10)]);
    assert_eq!(
        d.checksum,
        checksum_levels(full.top(Side::Bid, 3), full.top(Side::Ask, 3))
    );
    // Deep changes, and a change to a size the level has: nothing.
    let u = applied(
        &mut full,
        &[
            up(Side::Bid, 96, 7),
            up(Side::Ask, 120, 1),
            up(Side::Ask, 101, 10),
        ],
    );
    assert!(view.handle_delta(4, &u, &full).is_none());
    // The next delta's prev_seq is the last one sent, not 4.
    let u = applied(&mut full, &[up(Side::Ask, 102, 1)]);
    let d = view.handle_delta(5, &u, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (5, 3));
    assert_eq!(d.updates, &[up(Side::Ask, 102, 1)]);
    assert_eq!(view.snapshot().seq, 5);
}

#[test]
fn top_n_of_a_shallow_book_follows_every_change() {
    let mut full = ladder(2);
    let mut view = TopN::new(depth(10), 1, &full);
    let u = applied(&mut full, &[up(Side::Bid, 50, 1)]);
    let d = view.handle_delta(2, &u, &full).unwrap();
    assert_eq!(d.updates, &[up(Side::Bid, 50, 1)]);
    assert_eq!(d.checksum, full.checksum());
}

#[test]
fn conflation_merges_leaves_out_and_keeps_the_cadence() {
    const T: u64 = 100_000_000;
    let t0 = 1_000 * T + 10;
    let mut full = ladder(3);
    let mut changes = LevelChanges::new();
    let mut view = Conflated::new(Interval::Ms100, 7, t0);
    assert_eq!(view.poll_timeout(), None);
    // Within the creation's window: a level added then removed, one updated
    // twice, one updated and put back.
    apply(&mut full, &mut changes, &[up(Side::Bid, 90, 5)]);
    view.handle_delta(8, &changes);
    apply(
        &mut full,
        &mut changes,
        &[up(Side::Ask, 101, 3), up(Side::Bid, 99, 1)],
    );
    view.handle_delta(9, &changes);
    apply(
        &mut full,
        &mut changes,
        &[up(Side::Bid, 90, 0), up(Side::Ask, 101, 4)],
    );
    view.handle_delta(10, &changes);
    apply(&mut full, &mut changes, &[up(Side::Bid, 99, 10)]);
    view.handle_delta(11, &changes);
    assert_eq!(view.poll_timeout(), Some(1_001 * T));
    assert!(view.poll_emit(1_001 * T - 1, &full).is_none());
    let d = view.poll_emit(1_001 * T + 5, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (11, 7));
    assert_eq!(d.updates, &[up(Side::Ask, 101, 4)]);
    assert_eq!(d.checksum, full.checksum());
    assert_eq!(view.poll_timeout(), None);
    // A change later in the same window waits for the next one.
    apply(&mut full, &mut changes, &[up(Side::Ask, 101, 0)]);
    view.handle_delta(12, &changes);
    assert!(view.poll_emit(1_001 * T + 50, &full).is_none());
    assert_eq!(view.poll_timeout(), Some(1_002 * T));
    // Its snapshot meanwhile is the book at the last emission, seq 11.
    let snap = view.snapshot(&full);
    assert_eq!(snap.seq, 11);
    assert_eq!(snap.asks[0], lv(101, 4));
    let d = view.poll_emit(1_002 * T, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (12, 11));
    assert_eq!(d.updates, &[up(Side::Ask, 101, 0)]);
    // A quiet window, then one change goes out at the next poll.
    apply(&mut full, &mut changes, &[up(Side::Bid, 97, 2)]);
    view.handle_delta(13, &changes);
    assert_eq!(view.poll_timeout(), Some(1_003 * T));
    let d = view.poll_emit(1_005 * T + 3, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (13, 12));
    // An interval whose changes cancel out emits nothing, and keeps its window.
    apply(&mut full, &mut changes, &[up(Side::Bid, 97, 9)]);
    view.handle_delta(14, &changes);
    apply(&mut full, &mut changes, &[up(Side::Bid, 97, 2)]);
    view.handle_delta(15, &changes);
    assert_eq!(view.pending_levels(), 0);
    assert!(view.poll_emit(1_006 * T, &full).is_none());
    assert_eq!(view.poll_timeout(), None);
    apply(&mut full, &mut changes, &[up(Side::Bid, 97, 3)]);
    view.handle_delta(16, &changes);
    let d = view.poll_emit(1_006 * T + 1, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (16, 13));
}

#[test]
fn conflated_top_n_diffs_at_emission() {
    const T: u64 = 20_000_000;
    let mut full = ladder(4);
    let mut changes = LevelChanges::new();
    let mut view = ConflatedTopN::new(depth(2), Interval::Ms20, 3, &full, 0);
    // Churn that ends where it started, then a deep change: nothing.
    apply(&mut full, &mut changes, &[up(Side::Bid, 100, 0)]);
    view.handle_delta(4);
    apply(
        &mut full,
        &mut changes,
        &[up(Side::Bid, 100, 10), up(Side::Ask, 104, 1)],
    );
    view.handle_delta(5);
    assert!(view.poll_emit(T, &full).is_none());
    // A new best ask: 102 falls out of the top 2.
    apply(&mut full, &mut changes, &[up(Side::Ask, 100, 2)]);
    view.handle_delta(6);
    let d = view.poll_emit(T + 1, &full).unwrap();
    assert_eq!((d.seq, d.prev_seq), (6, 3));
    assert_eq!(d.updates, &[up(Side::Ask, 100, 2), up(Side::Ask, 102, 0)]);
    assert_eq!(view.snapshot().asks, vec![lv(100, 2), lv(101, 10)]);
}

#[test]
fn book_view_dispatches_on_the_channel() {
    let full = ladder(3);
    for name in ["book", "trades"] {
        assert!(BookView::new(Channel::parse(name).unwrap(), 1, &full, 0).is_none());
    }
    for name in ["book.5", "book@250ms", "book.20@5000ms"] {
        let c = Channel::parse(name).unwrap();
        let v = BookView::new(c, 4, &full, 0).unwrap();
        assert_eq!(v.channel(), c);
        assert_eq!(v.seq(), 4);
        let s = v.snapshot(&full);
        assert_eq!(s.seq, 4);
        assert_eq!(s.checksum, full.checksum());
    }
}

#[test]
fn cadence_at_the_end_of_the_clock() {
    let mut c = Cadence::new(Interval::Ms5000, u64::MAX - 1);
    assert_eq!(c.next_due_ns(), u64::MAX);
    assert!(!c.is_due(u64::MAX - 1));
    c.emitted(u64::MAX);
    assert!(c.is_due(u64::MAX));
}

// ---- Property tests ----

/// Prices overlap between the sides (books may be crossed, as feeds send
/// them) and deltas hit inside, at and beyond the top N.
fn arb_book() -> impl Strategy<Value = OrderBook> {
    (
        prop::collection::btree_map(0i64..60, 1i64..5, 0..40),
        prop::collection::btree_map(40i64..100, 1i64..5, 0..40),
    )
        .prop_map(|(bids, asks)| {
            let bids: Vec<_> = bids.iter().rev().map(|(&p, &s)| lv(p, s)).collect();
            let asks: Vec<_> = asks.iter().map(|(&p, &s)| lv(p, s)).collect();
            OrderBook::from_levels(&bids, &asks).unwrap()
        })
}

fn arb_update() -> impl Strategy<Value = pb::LevelUpdate> {
    (any::<bool>(), 0i64..100, 0i64..4)
        .prop_map(|(bid, price, size)| up(if bid { Side::Bid } else { Side::Ask }, price, size))
}

#[derive(Debug, Clone)]
enum Op {
    /// A delta, then a loop turn that polls; time advances by `dt` sixteenths
    /// of the interval first.
    Delta(Vec<pb::LevelUpdate>, u64),
    /// A loop turn without a delta.
    Poll(u64),
    /// The feed replaced the book.
    Replace(OrderBook),
    /// A new subscriber.
    Join,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (prop::collection::vec(arb_update(), 0..6), 0u64..24).prop_map(|(u, dt)| Op::Delta(u, dt)),
        3 => (0u64..40).prop_map(Op::Poll),
        1 => arb_book().prop_map(Op::Replace),
        1 => Just(Op::Join),
    ]
}

fn arb_depth() -> impl Strategy<Value = Depth> {
    prop_oneof![1usize..=12, 1usize..=100].prop_map(depth)
}

fn arb_interval() -> impl Strategy<Value = Interval> {
    prop::sample::select(Interval::ALL.to_vec())
}

/// The subscribers of one view and what they were sent.
struct Subscribers {
    channel: Channel,
    /// The interval in ns (conflated channels).
    interval_ns: Option<u64>,
    /// The window of the channel's last message (conflated: one a window).
    last_window: u64,
    clients: Vec<Client>,
}

impl Subscribers {
    fn window(&self, now: u64) -> u64 {
        self.interval_ns.map_or(0, |t| now / t)
    }

    /// Sends `delta` (if any) to every client; `true` if there was one.
    fn send(
        &mut self,
        delta: Option<ViewDelta<'_>>,
        full: &OrderBook,
        now: u64,
        last_seq: u64,
    ) -> Result<bool, TestCaseError> {
        let Some(d) = delta else { return Ok(false) };
        prop_assert_eq!(d.seq, last_seq, "seq of the last merged delta");
        if self.interval_ns.is_some() {
            prop_assert!(self.window(now) > self.last_window, "one message a window");
            self.last_window = self.window(now);
        }
        for c in self.clients.iter_mut() {
            c.apply(&d);
            prop_assert!(holds(c, self.channel, full), "client exact after the delta");
        }
        Ok(true)
    }

    fn all_exact(&self, full: &OrderBook) -> Result<(), TestCaseError> {
        for c in &self.clients {
            prop_assert!(holds(c, self.channel, full), "client not exact");
        }
        Ok(())
    }
}

/// A loop turn at `now`: the view emits if due. Due and nothing sent means
/// the interval changed nothing; not due means nothing is sent.
fn poll(
    view: &mut BookView,
    subs: &mut Subscribers,
    full: &OrderBook,
    now: u64,
    seq: u64,
) -> Result<(), TestCaseError> {
    let due = view.poll_timeout();
    let sent = subs.send(view.poll_emit(now, full), full, now, seq)?;
    match due {
        Some(t) if now >= t && !sent => subs.all_exact(full)?,
        Some(t) if now < t => prop_assert!(!sent, "nothing before it is due"),
        None => prop_assert!(!sent, "nothing without a delta"),
        _ => {}
    }
    Ok(())
}

/// Drives one view of `channel` through `ops` as the market thread will, and
/// checks every subscriber after every step (see the module doc).
fn run(channel: Channel, start: OrderBook, ops: Vec<Op>, t0: u64) -> Result<(), TestCaseError> {
    let interval_ns = channel.interval().map(Interval::ns);
    // Time advances in sixteenths of the interval (1 ms for `book.N`).
    let tick = interval_ns.map_or(1_000_000, |t| t / 16);
    let mut full = start;
    let mut seq = 1u64;
    let mut now = t0;
    let mut changes = LevelChanges::new();
    let mut view = BookView::new(channel, seq, &full, now).expect("a derived channel");
    prop_assert_eq!(view.channel(), channel);
    // One subscriber from the start; more join on the way.
    let mut subs = Subscribers {
        channel,
        interval_ns,
        last_window: 0,
        clients: vec![Client::from_snapshot(&view.snapshot(&full))],
    };
    subs.last_window = subs.window(now);
    for op in ops {
        match op {
            Op::Delta(updates, dt) => {
                now += dt * tick;
                // Captured only when a view needs it, as the market thread will.
                if view.needs_changes() {
                    changes.capture(&full, &updates);
                } else {
                    changes.clear();
                }
                full.apply_updates(&updates, MAX_LEVELS_PER_SIDE, &mut UpdateScratch::default())
                    .unwrap();
                seq += 1;
                let d = view.handle_delta(seq, &updates, &changes, &full);
                if interval_ns.is_some() {
                    prop_assert!(d.is_none());
                } else {
                    subs.send(d, &full, now, seq)?;
                    // book.N: exact after every delta, sent or not.
                    subs.all_exact(&full)?;
                }
                poll(&mut view, &mut subs, &full, now, seq)?;
            }
            Op::Poll(dt) => {
                now += dt * tick;
                poll(&mut view, &mut subs, &full, now, seq)?;
            }
            Op::Replace(book) => {
                full = book;
                seq += 1;
                view.reset(seq, &full, now);
                subs.last_window = subs.window(now);
                let snap = view.snapshot(&full);
                prop_assert_eq!(snap.seq, seq);
                for c in subs.clients.iter_mut() {
                    *c = Client::from_snapshot(&snap);
                }
                subs.all_exact(&full)?;
            }
            Op::Join => {
                let snap = view.snapshot(&full);
                prop_assert_eq!(snap.seq, view.seq());
                let c = Client::from_snapshot(&snap);
                // A newcomer holds what the others hold.
                prop_assert_eq!(&c.book, &subs.clients[0].book);
                prop_assert_eq!(c.seq, subs.clients[0].seq);
                subs.clients.push(c);
            }
        }
        // Whatever happened, the view's snapshot is what every client holds.
        let snap = view.snapshot(&full);
        for c in &subs.clients {
            prop_assert_eq!(snap.seq, c.seq);
            prop_assert_eq!(&snap.bids, &c.book.snapshot_levels(Side::Bid));
            prop_assert_eq!(&snap.asks, &c.book.snapshot_levels(Side::Ask));
        }
    }
    // A last turn long after: every change is out, every client exact.
    now += 1_000 * tick;
    poll(&mut view, &mut subs, &full, now, seq)?;
    prop_assert_eq!(view.poll_timeout(), None);
    subs.all_exact(&full)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn book_n_clients_hold_exactly_the_top_n(
        n in arb_depth(),
        start in arb_book(),
        ops in prop::collection::vec(arb_op(), 1..120),
    ) {
        run(Channel::Book { depth: Some(n), interval: None }, start, ops, 1_700_000_000_000_000_000)?;
    }

    #[test]
    fn book_at_t_clients_hold_the_full_book_at_every_emission(
        t in arb_interval(),
        start in arb_book(),
        ops in prop::collection::vec(arb_op(), 1..120),
        t0 in 0u64..10_000_000_000,
    ) {
        run(Channel::Book { depth: None, interval: Some(t) }, start, ops, t0)?;
    }

    #[test]
    fn book_n_at_t_clients_hold_the_top_n_at_every_emission(
        n in arb_depth(),
        t in arb_interval(),
        start in arb_book(),
        ops in prop::collection::vec(arb_op(), 1..120),
        t0 in 0u64..10_000_000_000,
    ) {
        run(Channel::Book { depth: Some(n), interval: Some(t) }, start, ops, t0)?;
    }

    #[test]
    fn level_changes_are_the_net_effect_of_the_delta(
        start in arb_book(),
        updates in prop::collection::vec(arb_update(), 0..12),
    ) {
        let mut after = start.clone();
        let mut changes = LevelChanges::new();
        apply(&mut after, &mut changes, &updates);
        // Replaying the changes' `after` on the book before gives the book after,
        // and each `before` is what the book before held.
        let mut replay = start.clone();
        for c in changes.iter() {
            prop_assert_eq!(start.size_at(c.side, c.price).unwrap_or(0), c.before);
            replay.apply(c.side, c.price, c.after);
        }
        prop_assert_eq!(&replay, &after);
        // And no level that differs is missing.
        for side in [Side::Bid, Side::Ask] {
            for l in start.levels(side).chain(after.levels(side)) {
                let differs = start.size_at(side, l.price) != after.size_at(side, l.price);
                let listed = changes.side(side).iter().any(|c| c.price == l.price);
                prop_assert_eq!(differs, listed);
            }
        }
    }
}
