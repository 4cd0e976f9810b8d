//! Tests of the NATS test harness (`tests/common/nats.rs`) against real
//! nats-server processes: a server starts ready and dies by its PID; a
//! 3-server cluster with a leaf node forms; and, by the servers' own
//! monitoring counters, only the subjects a leaf's clients subscribe to cross
//! the leaf link.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::nats::{self, NatsServer, RawNats};

/// Polls `cond` every 20 ms for at most 10 s, then fails naming `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + nats::READY_WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

/// Reads exactly `n` messages (each within 5 s), then checks none follows
/// within 300 ms.
fn read_exactly(c: &mut RawNats, n: usize) -> Vec<nats::NatsMsg> {
    let mut got = Vec::new();
    for i in 0..n {
        match c.read_msg(Duration::from_secs(5)) {
            Some(m) => got.push(m),
            None => panic!("message {i} of {n} did not arrive within 5 s"),
        }
    }
    if let Some(extra) = c.read_msg(Duration::from_millis(300)) {
        panic!("unexpected extra message: {extra:?}");
    }
    got
}

#[test]
fn single_server_serves_then_dies_by_pid_and_restarts_on_same_ports() {
    let mut s = nats::start_single();
    assert_eq!(s.url(), format!("nats://127.0.0.1:{}", s.client_port));
    assert!(s.cluster_port.is_none() && s.leaf_port.is_none());
    let dir = s.data_dir.clone();
    assert!(dir.join("nats.conf").is_file() && dir.join("nats.log").is_file());

    // Round trip through the server, and its counters say exactly that.
    let mut c = RawNats::connect(s.client_port);
    c.sub("t.a", 7);
    c.flush();
    for i in 0..3 {
        c.publish("t.a", format!("m{i}").as_bytes());
    }
    c.publish("t.none", b"nobody listens");
    c.flush();
    let got = read_exactly(&mut c, 3);
    assert!(got.iter().all(|m| m.subject == "t.a" && m.sid == 7));
    assert_eq!(got[2].payload, b"m2");
    assert_eq!(s.varz_in_msgs(), 4, "4 published");
    assert_eq!(s.varz_out_msgs(), 3, "3 delivered");
    assert_eq!(s.client_in_out_msgs(), (4, 3));
    drop(c);

    let pid = s.pid().expect("running");
    s.kill();
    assert!(s.pid().is_none());
    assert!(!s.is_running());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still there after kill"
    );
    assert!(!accepts(s.client_port), "client port still accepting");
    assert!(!accepts(s.monitor_port), "monitor port still accepting");

    // Same ports, a fresh process: counters start over.
    let ports = (s.client_port, s.monitor_port);
    s.restart();
    assert_ne!(s.pid(), Some(pid));
    assert_eq!((s.client_port, s.monitor_port), ports);
    assert!(accepts(s.client_port));
    assert_eq!(s.varz_in_msgs(), 0);

    drop(s);
    assert!(!dir.exists(), "data dir left behind: {}", dir.display());
}

#[test]
fn cluster_of_three_with_leaf_forms() {
    let c = nats::start_cluster(3, true);
    assert_eq!(c.servers.len(), 3);
    assert_eq!(c.urls().split(',').count(), 3);
    for s in &c.servers {
        assert!(c.urls().contains(&s.url()));
        assert!(s.cluster_port.is_some() && s.leaf_port.is_some());
        assert_eq!(s.num_routes(), 2, "{} routes", s.name);
    }
    let leaf = c.leaf.as_ref().expect("leaf");
    assert_eq!(leaf.num_leafs(), 1);
    assert_eq!(
        c.servers.iter().map(NatsServer::num_leafs).sum::<u64>(),
        1,
        "exactly one hub holds the leaf connection"
    );
    let pids: Vec<u32> = c
        .servers
        .iter()
        .chain([leaf])
        .filter_map(NatsServer::pid)
        .collect();
    assert_eq!(pids.len(), 4);
    let dirs: Vec<_> = c.servers.iter().map(|s| s.data_dir.clone()).collect();

    drop(c);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(dirs.iter().all(|d| !d.exists()));
}

#[test]
fn cluster_member_killed_and_restarted_rejoins() {
    let mut c = nats::start_cluster(3, false);
    assert!(c.leaf.is_none() && c.servers[0].leaf_port.is_none());
    c.servers[1].kill();
    wait_until("the others to drop the dead member's routes", || {
        c.servers[0].num_routes() == 1 && c.servers[2].num_routes() == 1
    });
    c.servers[1].restart();
    wait_until("routes back to a full mesh", || {
        c.servers.iter().all(|s| s.num_routes() == 2)
    });

    // A message crosses exactly one route: server 2 to server 0.
    let mut sub = RawNats::connect(c.servers[0].client_port);
    sub.sub("r.x", 1);
    sub.flush();
    wait_until("server 2 to learn the interest", || {
        c.servers[2].knows_remote_interest("r.x")
    });
    let before = c.servers[2].route_in_out_msgs();
    let mut publ = RawNats::connect(c.servers[2].client_port);
    publ.publish("r.x", b"1");
    publ.publish("r.y", b"2");
    publ.flush();
    assert_eq!(read_exactly(&mut sub, 1)[0].payload, b"1");
    let after = c.servers[2].route_in_out_msgs();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1));
}

#[test]
fn leaf_link_carries_only_subscribed_subjects() {
    const WANTED: &str = "md.BTC-USD.book";
    const OTHER: &str = "md.ETH-USD.book";
    const N: u64 = 20;
    const M: u64 = 30;

    let c = nats::start_cluster(3, true);
    let leaf = c.leaf.as_ref().unwrap();
    let hub = c.leaf_hub();
    let origin = &c.servers[0];

    // Two subscribers on the leaf, one subject.
    let mut sub = RawNats::connect(leaf.client_port);
    sub.sub(WANTED, 1);
    sub.flush();
    let mut sub2 = RawNats::connect(leaf.client_port);
    sub2.sub(WANTED, 9);
    sub2.flush();
    wait_until(
        "the publisher's server to learn the leaf's interest",
        || origin.knows_remote_interest(WANTED),
    );
    let wanted_by_leaf = hub.leaf_subjects();
    assert!(
        wanted_by_leaf.contains(&WANTED.to_string()),
        "{wanted_by_leaf:?}"
    );
    assert!(
        !wanted_by_leaf
            .iter()
            .any(|s| s.starts_with("md.") && s != WANTED)
    );

    let leaf_link0 = leaf.leaf_in_out_msgs();
    let hub_link0 = hub.leaf_in_out_msgs();
    let leaf_varz0 = (leaf.varz_in_msgs(), leaf.varz_out_msgs());
    let origin_clients0 = origin.client_in_out_msgs();

    let mut publ = RawNats::connect(origin.client_port);
    for i in 0..M {
        publ.publish(OTHER, format!("e{i}").as_bytes());
        if i < N {
            publ.publish(WANTED, format!("b{i}").as_bytes());
        }
    }
    publ.flush();

    let got = read_exactly(&mut sub, N as usize);
    assert!(got.iter().all(|m| m.subject == WANTED));
    assert_eq!(got[0].payload, b"b0");
    assert_eq!(
        read_exactly(&mut sub2, N as usize)[N as usize - 1].payload,
        format!("b{}", N - 1).into_bytes()
    );

    // The server's own counters: all N+M came in at the origin, only the N
    // wanted ones crossed the leaf link (once, for two subscribers there),
    // in either side's view; the leaf delivered 2N.
    let origin_clients = origin.client_in_out_msgs();
    assert_eq!(origin_clients.0 - origin_clients0.0, N + M);
    let leaf_link = leaf.leaf_in_out_msgs();
    assert_eq!(
        leaf_link.0 - leaf_link0.0,
        N,
        "msgs into the leaf over its link"
    );
    assert_eq!(leaf_link.1 - leaf_link0.1, 0, "msgs out of the leaf");
    let hub_link = hub.leaf_in_out_msgs();
    assert_eq!(
        hub_link.1 - hub_link0.1,
        N,
        "msgs the hub sent over the link"
    );
    assert_eq!(leaf.varz_in_msgs() - leaf_varz0.0, N);
    assert_eq!(leaf.varz_out_msgs() - leaf_varz0.1, 2 * N);
    assert!(!hub.leaf_subjects().contains(&OTHER.to_string()));

    // Control: once the leaf wants OTHER too (and no longer WANTED), OTHER
    // crosses and WANTED stops: the counters follow the interest.
    drop(sub2);
    sub.sub(OTHER, 2);
    sub.unsub(1);
    sub.flush();
    wait_until("the interest change to reach the origin", || {
        origin.knows_remote_interest(OTHER) && !origin.knows_remote_interest(WANTED)
    });
    let leaf_link1 = leaf.leaf_in_out_msgs();
    publ.publish(WANTED, b"late");
    publ.publish(OTHER, b"now wanted");
    publ.flush();
    let got = read_exactly(&mut sub, 1);
    assert_eq!((got[0].subject.as_str(), got[0].sid), (OTHER, 2));
    assert_eq!(leaf.leaf_in_out_msgs().0 - leaf_link1.0, 1);
}
