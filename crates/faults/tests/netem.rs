//! The delay nemesis really holds packets: a TCP connect between two node namespaces
//! takes at least the injected delay while it is on, and still connects once healed. Needs
//! root, `ip` and `iptables` (prints SKIP otherwise, unless `SHOAL_FAULTS_REQUIRED=1`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use shoal_faults::net::Net;

/// Runs `f` on a thread moved into network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread")
}

/// The slowest of three TCP connects from node 1 to a listener on node 2.
fn connect_time(net: &Net, to: SocketAddr) -> Duration {
    in_ns(&net.node_ns(1), move || {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
                t.elapsed()
            })
            .max()
            .unwrap_or_default()
    })
}

#[test]
fn delayed_packets_arrive_late_and_healing_ends_it() {
    if !Net::supported_or_skip("netem") {
        return;
    }
    let net = Net::create(2).expect("namespaces");
    let addr = SocketAddr::new(net.ip(2).into(), 17_000);
    let listener = in_ns(&net.node_ns(2), move || {
        TcpListener::bind(addr).expect("bind")
    });
    // Accept in the background; the listener socket lives in node 2's namespace.
    std::thread::spawn(move || for _ in listener.incoming() {});
    let before = connect_time(&net, addr);
    let delayer = net
        .delay(1, Duration::from_millis(150), Duration::ZERO, 7)
        .expect("delay");
    let during = connect_time(&net, addr);
    net.heal().expect("heal");
    drop(delayer);
    let after = connect_time(&net, addr);
    println!("connect: before {before:?}, delayed {during:?}, healed {after:?}");
    // A connect's SYN leaves node 1 through the queue: it cannot finish sooner.
    assert!(
        during >= Duration::from_millis(150),
        "not delayed: {during:?}"
    );
}
