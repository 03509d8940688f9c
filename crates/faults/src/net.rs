//! Hosts as network namespaces: one namespace per node plus a hub namespace holding a
//! bridge, so every packet between two nodes crosses veth pairs and a bridge a test can
//! cut. Faults are `iptables` rules inside the node namespaces (partitions: drop what
//! arrives from the other side; loss: a random-drop rule). Nothing is configured outside
//! namespaces this module created, and [`Net`]'s `Drop` deletes them all.
//!
//! The harness' own clients run inside the hub namespace ([`Net::enter_hub`] on each
//! runtime thread), so they reach the nodes over the same bridge and see the same faults
//! a client on another machine would; the hub itself is never partitioned.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

/// Why the harness cannot run here (not root, no `ip`, no `iptables`, namespaces refused).
#[derive(Debug)]
pub struct Unsupported(pub String);

/// Runs `cmd args…`, returning its stderr as the error when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces, bridge and addresses of one run.
pub struct Net {
    /// Prefix of every namespace name of this run (`sf<pid>r<run>`), unique per run.
    prefix: String,
    /// Third octet of the run's 10.231.X.0/24 subnet.
    subnet: u8,
    nodes: usize,
}

impl Net {
    /// Checks the tools and privileges the harness needs; the reason when it cannot run.
    /// For tests: whether the harness can run here. When it cannot, prints `SKIP` and
    /// why, or fails (panics) when `SHOAL_FAULTS_REQUIRED=1` (CI as root must run it).
    pub fn supported_or_skip(name: &str) -> bool {
        match Net::check_support() {
            Ok(()) => true,
            Err(why) => {
                assert!(
                    std::env::var("SHOAL_FAULTS_REQUIRED").as_deref() != Ok("1"),
                    "the fault harness must run here but cannot: {}",
                    why.0
                );
                println!("SKIP {name}: {}", why.0);
                false
            }
        }
    }

    pub fn check_support() -> Result<(), Unsupported> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Unsupported("needs root for network namespaces".into()));
        }
        for tool in ["ip", "iptables"] {
            let found = Command::new(tool).arg("--version").output().is_ok()
                || Command::new(tool).arg("-V").output().is_ok();
            if !found {
                return Err(Unsupported(format!(
                    "`{tool}` not found (apt-get install -y iproute2 iptables)"
                )));
            }
        }
        Ok(())
    }

    /// Creates the hub (bridge, client address .254) and `nodes` node namespaces (.1 …).
    pub fn create(nodes: usize) -> Result<Net, String> {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let net = Net {
            prefix: format!("sf{}r{run}", pid % 100_000),
            subnet: (20 + (pid + run * 37) % 200) as u8,
            nodes,
        };
        net.destroy();
        let hub = net.hub();
        sh("ip", &["netns", "add", &hub])?;
        sh("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        sh("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        let hub_cidr = format!("{}/24", net.hub_ip());
        sh("ip", &["-n", &hub, "addr", "add", &hub_cidr, "dev", "br0"])?;
        for i in 1..=nodes {
            let ns = net.node_ns(i);
            let veth = format!("v{i}");
            sh("ip", &["netns", "add", &ns])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            sh(
                "ip",
                &[
                    "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            sh("ip", &["-n", &hub, "link", "set", &veth, "master", "br0"])?;
            sh("ip", &["-n", &hub, "link", "set", &veth, "up"])?;
            let cidr = format!("{}/24", net.ip(i));
            sh("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Node `i`'s address (1-based).
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, i as u8)
    }

    pub fn hub_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 254)
    }

    /// Moves the calling thread into the hub namespace: sockets it opens from now on live
    /// there. Meant for `tokio::runtime::Builder::on_thread_start`.
    pub fn enter_hub(hub: &str) -> Result<(), String> {
        let f = File::open(format!("/var/run/netns/{hub}")).map_err(|e| format!("{hub}: {e}"))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {hub}: {e}"))
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let ns = self.node_ns(i);
        let mut all = vec!["netns", "exec", &ns, "iptables", "-w"];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Node `to` drops every packet from node `from` (one direction only).
    pub fn drop_from(&self, to: usize, from: usize) -> Result<(), String> {
        let src = self.ip(from).to_string();
        self.iptables(to, &["-A", "INPUT", "-s", &src, "-j", "DROP"])
    }

    /// Cuts the network into `sides`: nodes on different sides cannot exchange a packet;
    /// a node in no side keeps talking to everyone (a bridge node).
    pub fn partition(&self, sides: &[Vec<usize>]) -> Result<(), String> {
        for (a, side) in sides.iter().enumerate() {
            for (b, other) in sides.iter().enumerate() {
                if a == b {
                    continue;
                }
                for &x in side {
                    for &y in other {
                        self.drop_from(x, y)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Node `i` drops a random `percent` % of the packets it receives from other nodes.
    pub fn loss(&self, i: usize, percent: u32) -> Result<(), String> {
        let p = format!("{:.3}", f64::from(percent) / 100.0);
        let rule = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ];
        self.peers_rule(i, "INPUT", &rule)
    }

    /// Appends `rule` to node `i`'s `chain` for its traffic with the other nodes (`INPUT`
    /// matches the source, `OUTPUT` the destination), behind a rule that lets client
    /// traffic with the hub through untouched: the faults are between nodes.
    fn peers_rule(&self, i: usize, chain: &str, rule: &[&str]) -> Result<(), String> {
        let side = if chain == "INPUT" { "-s" } else { "-d" };
        let subnet = format!("10.231.{}.0/24", self.subnet);
        let hub = self.hub_ip().to_string();
        self.iptables(i, &["-A", chain, side, &hub, "-j", "ACCEPT"])?;
        let mut args = vec!["-A", chain, side, &subnet];
        args.extend_from_slice(rule);
        self.iptables(i, &args)
    }

    /// Node `i`'s packets to its peers are held `delay` plus up to `jitter` (a jitter
    /// wider than the gap between packets reorders them); client traffic is untouched.
    /// Undone by [`Net::heal`] and dropping the returned delayer (in that order).
    pub fn delay(
        &self,
        i: usize,
        delay: std::time::Duration,
        jitter: std::time::Duration,
        seed: u64,
    ) -> Result<crate::netem::Delayer, String> {
        let delayer = crate::netem::Delayer::start(&self.node_ns(i), 0, delay, jitter, seed)?;
        let rule = ["-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"];
        self.peers_rule(i, "OUTPUT", &rule)?;
        Ok(delayer)
    }

    /// Node `i` sends a random `percent` % of its packets to each peer twice (iptables'
    /// `TEE` clones them to the same destination).
    pub fn duplicate(&self, i: usize, percent: u32) -> Result<(), String> {
        let p = format!("{:.3}", f64::from(percent) / 100.0);
        for j in (1..=self.nodes).filter(|j| *j != i) {
            let peer = self.ip(j).to_string();
            self.iptables(
                i,
                &[
                    "-t",
                    "mangle",
                    "-A",
                    "POSTROUTING",
                    "-d",
                    &peer,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "TEE",
                    "--gateway",
                    &peer,
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every network fault.
    pub fn heal(&self) -> Result<(), String> {
        for i in 1..=self.nodes {
            self.iptables(i, &["-F", "INPUT"])?;
            self.iptables(i, &["-F", "OUTPUT"])?;
            self.iptables(i, &["-t", "mangle", "-F", "POSTROUTING"])?;
        }
        Ok(())
    }

    /// Deletes this run's namespaces (and with them the veths and the bridge).
    fn destroy(&self) {
        for i in 1..=self.nodes {
            let _ = sh("ip", &["netns", "del", &self.node_ns(i)]);
        }
        let _ = sh("ip", &["netns", "del", &self.hub()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}
