//! Elastic placement with real `shoal` processes on loopback: scale-out under writes,
//! manual moves and their refusals, pausing the rebalancer, kill -9 in the middle of moves
//! and of formation, and writes that do not need group 0.
//!
//! Every test polls for conditions with a deadline; the one fixed window is the 60 s in
//! which a balanced cluster must not move anything (the property under test).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::load::{every_row_once_everywhere, local_rows_by_vshard, Writer};
use support::{
    active_moves, balanced, eventually, eventually_in, nodes, placement, replica_counts, rows,
    within, Node,
};

/// Leaderships per ACTIVE node as reported (`system.nodes.leaderships`).
async fn leaderships(n: &Node) -> Option<BTreeMap<u64, i64>> {
    let r = rows(
        n,
        "SELECT node_id, leaderships FROM system.nodes WHERE lifecycle = 'ACTIVE' ORDER BY node_id",
    )
    .await?;
    r.as_array()?
        .iter()
        .map(|row| Some((row[0].as_u64()?, row[1].as_i64()?)))
        .collect()
}

/// Every vshard's term on every node, for term stability.
async fn terms(ns: &[&Node]) -> Vec<(u64, String)> {
    let mut out = vec![];
    for n in ns {
        let r = rows(
            n,
            "SELECT vshard, term FROM system.replicas ORDER BY vshard",
        )
        .await
        .unwrap_or_default();
        out.push((n.node_id, r.to_string()));
    }
    out
}

/// The newest move id group 0 recorded (0: none).
async fn last_move(n: &Node) -> Option<i64> {
    let r = rows(
        n,
        "SELECT CAST(coalesce(max(move_id), 0) AS BIGINT) FROM system.moves",
    )
    .await?;
    r[0][0].as_i64()
}

/// Scale-out: one node, then four more join while a writer runs. The cluster moves
/// replicas until every node holds 9 or 10 of the 48 (16 vshards × RF 3) and leads 3 or 4
/// vshards, then moves nothing for 60 s with every term still; every acknowledged row is
/// there exactly once, on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_five_nodes_under_writes_converges_and_then_stays_put() {
    let tmp = tempfile::tempdir().expect("tmp");
    let first = Node::spawn_pinned(&tmp.path().join("n1"), &[]);
    first.wait_ready().await;
    let seed = first.rpc_addr.clone();
    let urls = Arc::new(Mutex::new(vec![first.url("")]));
    let writer = Writer::start(urls.clone());
    let started = Instant::now();
    let mut c = vec![first];
    for i in 2..=5 {
        let n = Node::spawn_pinned(&tmp.path().join(format!("n{i}")), &["--join", &seed]);
        n.wait_ready().await;
        urls.lock().expect("urls").push(n.url(""));
        c.push(n);
    }
    let all: Vec<&Node> = c.iter().collect();
    within(
        "five nodes balanced: 9 or 10 replicas and 3 or 4 leaderships each",
        Duration::from_secs(300),
        &all,
        || async {
            balanced(&c[0], 3).await?;
            let counts = replica_counts(&c[0]).await?;
            let lead = leaderships(&c[0]).await?;
            (counts.len() == 5
                && counts.values().all(|n| (9..=10).contains(n))
                && lead.len() == 5
                && lead.values().max()? - lead.values().min()? <= 1)
                .then_some(())
        },
    )
    .await;
    let converged = started.elapsed();
    let written = writer.finish().await;
    println!(
        "scale-out 1 → 5 under writes: balanced {converged:?} after the first join, {} moves, {written} rows written",
        last_move(&c[0]).await.unwrap_or(0)
    );
    every_row_once_everywhere(&all, "scale", written).await;

    // Balanced means still: no move and no term change for 60 s.
    let moves_before = last_move(&c[0]).await.expect("moves");
    let terms_before = terms(&all).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        last_move(&c[0]).await,
        Some(moves_before),
        "a balanced cluster started a move"
    );
    assert_eq!(active_moves(&c[0]).await, Some(0));
    assert_eq!(terms(&all).await, terms_before, "terms moved while idle");
    for n in &c {
        assert!(!n.stderr_text().contains("panicked"), "{}", n.stderr_text());
    }
}

/// A manual move, its refusals, and pausing the rebalancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_moves_their_refusals_and_a_paused_rebalancer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dirs: Vec<_> = (1..=4).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let c3 = support::cluster(&[&dirs[0], &dirs[1], &dirs[2]]).await;
    support::all_replicated(&c3[0]).await;
    let (s, v) = c3[0]
        .sql("SET CLUSTER SETTING rebalance_paused = true")
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c3[2].sql("SHOW CLUSTER SETTINGS").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["rows"][0],
        serde_json::json!(["rebalance_paused", "true"])
    );
    let (s, v) = c3[0]
        .sql("SET CLUSTER SETTING rebalance_pauzed = true")
        .await;
    assert_eq!((s, v["sqlstate"].as_str()), (400, Some("42704")), "{v}");
    let mut c = c3;
    let fourth = Node::spawn_pinned(&dirs[3], &["--join", c[0].rpc_addr.as_str()]);
    fourth.wait_ready().await;
    c.push(fourth);
    eventually("node 4 ACTIVE", || async {
        nodes(&c[0])
            .await
            .iter()
            .any(|r| r.0 == 4 && r.1 == "ACTIVE")
            .then_some(())
    })
    .await;
    let body: String = (0..400)
        .map(|i| {
            format!(
                "m,sym=s{} v={i}i {}\n",
                i % 40,
                1_700_000_000_000_000_000u64 + i
            )
        })
        .collect();
    assert_eq!(c[1].write(&body).await.0, 204);

    // Refusals, each with its reason.
    for (sql, why) in [
        ("ALTER VSHARD 3 MOVE REPLICA FROM 1 TO 2", "already holds"),
        (
            "ALTER VSHARD 3 MOVE REPLICA FROM 4 TO 1",
            "holds no replica",
        ),
        ("ALTER VSHARD 3 MOVE REPLICA FROM 1 TO 9", "not alive"),
        ("ALTER VSHARD 99 MOVE REPLICA FROM 1 TO 4", "does not exist"),
    ] {
        let (s, v) = c[0].sql(sql).await;
        assert_eq!(s, 400, "{sql}: {v}");
        assert_eq!(v["sqlstate"], "55000", "{sql}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(why),
            "{sql}: expected '{why}' in {v}"
        );
    }
    let (s, v) = c[0].sql("ALTER VSHARD 3 MOVE SOMEWHERE").await;
    assert_eq!((s, v["sqlstate"].as_str()), (400, Some("42601")), "{v}");

    // Nothing moves by itself while paused, though node 4 holds nothing.
    assert_eq!(last_move(&c[0]).await, Some(0));

    // A manual move goes through, paused or not.
    let (s, v) = c[2].sql("ALTER VSHARD 3 MOVE REPLICA FROM 1 TO 4").await;
    assert_eq!(s, 200, "{v}");
    let all: Vec<&Node> = c.iter().collect();
    eventually_in("the move completes", &all, || async {
        let r = rows(
            &c[0],
            "SELECT state, from_node, to_node, reason FROM system.moves",
        )
        .await?;
        (r.as_array()?.len() == 1 && r[0][0].as_str()? == "COMPLETED").then_some(())
    })
    .await;
    let p = placement(&c[0]).await.expect("placement");
    assert_eq!(p[3], vec![2, 3, 4]);
    eventually("node 4's replica of vshard 3 holds its rows", || async {
        let mine = local_rows_by_vshard(&c[3]).await?;
        let theirs = local_rows_by_vshard(&c[1]).await?;
        (mine.len() == 1 && mine.get(&3)? == theirs.get(&3)?).then_some(())
    })
    .await;
    eventually("node 1 closed its replica of vshard 3", || async {
        (!local_rows_by_vshard(&c[0]).await?.contains_key(&3)).then_some(())
    })
    .await;
    assert_eq!(last_move(&c[0]).await, Some(1), "paused: no other move");

    // Resumed, the rebalancer gives node 4 its share.
    let (s, v) = c[0]
        .sql("SET CLUSTER SETTING rebalance_paused = false")
        .await;
    assert_eq!(s, 200, "{v}");
    within(
        "rebalanced onto node 4 after resuming",
        Duration::from_secs(180),
        &all,
        || async {
            balanced(&c[0], 3).await?;
            (replica_counts(&c[0]).await?.get(&4).copied()? >= 11).then_some(())
        },
    )
    .await;
    assert_eq!(c[3].count("SELECT count(*) FROM m").await, 400);
}

/// Data that needs a snapshot to move (flushed, logs purged) under a slow snapshot rate,
/// so each move takes a while; kill -9 the source, then the target, then group 0's leader
/// while moves are catching up. Every move completes or fails and is planned again; at the
/// end the cluster is balanced, every vshard has its three replicas, and no row is lost or
/// doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_survive_kill9_of_their_source_target_and_group0_leader() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dirs: Vec<_> = (1..=4).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let flags = [
        "--snapshot-max-bytes-per-sec",
        "100000",
        "--flush-age-ms",
        "300",
        "--flush-check-interval-ms",
        "100",
        "--rebalance-interval-ms",
        "500",
    ];
    let c3 = support::cluster_with(&[&dirs[0], &dirs[1], &dirs[2]], &flags).await;
    support::all_replicated(&c3[0]).await;
    // Several MB of parts over the 16 vshards: each move ships a snapshot of a few
    // hundred KB, a few seconds at 100 KB/s.
    let mut written = 0u64;
    for batch in 0..12 {
        let body: String = (0..5_000u64)
            .map(|i| {
                let id = batch * 5_000 + i;
                format!(
                    "k,sym=s{} id={id}i,pad=\"{:x}{:x}{:x}\" {}\n",
                    id % 64,
                    id.wrapping_mul(0x9E37_79B9),
                    id.wrapping_mul(0x85EB_CA6B),
                    id.wrapping_mul(0xC2B2_AE35),
                    1_700_000_000_000_000_000u64 + id
                )
            })
            .collect();
        let (s, b) = c3[0].write(&body).await;
        assert_eq!(s, 204, "{b}");
        written += 5_000;
    }
    eventually("every vshard flushed", || async {
        let r = rows(&c3[0], "SELECT sum(hot_rows) FROM system.replicas").await?;
        (r[0][0].as_i64()? == 0).then_some(())
    })
    .await;
    let mut c = c3;
    let mut extra = flags.to_vec();
    extra.extend(["--join", c[0].rpc_addr.as_str()]);
    let fourth = Node::spawn_pinned(&dirs[3], &extra);
    fourth.wait_ready().await;
    c.push(fourth);

    // Three rounds: wait for a move to be catching up, then kill one of its parties.
    for role in ["source", "target", "group-0 leader"] {
        let (mv, from, to, copied) = within(
            &format!("a move catching up (to kill its {role})"),
            Duration::from_secs(120),
            &[&c[0], &c[1]],
            || async {
                for n in c.iter().filter(|n| n.child.is_some()) {
                    let r = rows(
                        n,
                        "SELECT move_id, from_node, to_node, bytes_copied FROM system.moves WHERE state = 'CATCHING_UP'",
                    )
                    .await?;
                    if let Some(row) = r.as_array()?.first() {
                        return Some((
                            row[0].as_u64()?,
                            row[1].as_u64()?,
                            row[2].as_u64()?,
                            row[3].as_u64()?,
                        ));
                    }
                }
                None
            },
        )
        .await;
        let victim = match role {
            "source" => from,
            "target" => to,
            _ => {
                let v = nodes(&c[0]).await;
                v.iter()
                    .find(|r| r.3 == "leader")
                    .map(|r| r.0)
                    .expect("group 0 leader")
            }
        };
        println!(
            "killing node {victim}, the {role} of move {mv} ({from} → {to}, {copied} bytes copied)"
        );
        let i = c.iter().position(|n| n.node_id == victim).expect("victim");
        c[i].kill9();
        let alive = c.iter().find(|n| n.child.is_some()).expect("a node");
        eventually("group 0 answers again", || async {
            rows(alive, "SELECT count(*) FROM system.moves")
                .await
                .map(|_| ())
        })
        .await;
        c[i].restart().await;
    }
    let all: Vec<&Node> = c.iter().collect();
    within(
        "balanced again with every vshard on three replicas",
        Duration::from_secs(300),
        &all,
        || async {
            balanced(&c[0], 3).await?;
            (replica_counts(&c[0]).await?.len() == 4).then_some(())
        },
    )
    .await;
    let r = rows(
        &c[0],
        "SELECT state, count(*) FROM system.moves GROUP BY state",
    )
    .await
    .expect("moves");
    println!("moves by state after the kills: {r}");
    let shipped = rows(
        &c[0],
        "SELECT move_id, bytes_copied, bytes_total FROM system.moves WHERE bytes_total > 0",
    )
    .await
    .expect("moves");
    println!("moves that recorded snapshot progress: {shipped}");
    assert!(
        !shipped.as_array().expect("rows").is_empty(),
        "moves of flushed vshards ship snapshots, and their progress is recorded"
    );
    every_row_once_everywhere(&all, "k", written).await;
    for n in &c {
        assert!(!n.stderr_text().contains("panicked"), "{}", n.stderr_text());
    }
}

/// The wedge outside testing found: a node killed while a three-node cluster forms left
/// group 0 in a joint configuration it could never leave, every write failing and
/// /health/ready still 200. Now group 0 grows 1 → 3 in one step and writes to existing
/// tables do not need it. Node 2 is killed at each point of the formation in turn; the
/// survivors must take DDL and writes, and the restarted node must rejoin as a voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_step_of_formation_does_not_wedge_the_cluster() {
    for step in ["joined", "learner", "voter"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let first = Node::spawn_pinned(&tmp.path().join("n1"), &[]);
        first.wait_ready().await;
        assert_eq!(first.write("pre,k=a v=1 1\n").await.0, 204);
        let seed = first.rpc_addr.clone();
        let mut second = Node::spawn_pinned(&tmp.path().join("n2"), &["--join", &seed]);
        let third = Node::spawn_pinned(&tmp.path().join("n3"), &["--join", &seed]);
        let role_of = |id: u64| {
            let first = &first;
            async move {
                nodes(first)
                    .await
                    .into_iter()
                    .find(|r| r.0 == id)
                    .map(|r| r.3)
            }
        };
        match step {
            "joined" => second.wait_ready().await,
            "learner" => {
                // Caught as a learner when possible; promotion may beat the poll.
                eventually("node 2 a member of group 0", || async {
                    let r = role_of(second.node_id).await?;
                    (r == "learner" || r == "voter").then_some(())
                })
                .await
            }
            _ => {
                eventually("node 2 a voter of group 0", || async {
                    (role_of(second.node_id).await? == "voter").then_some(())
                })
                .await
            }
        }
        second.kill9();
        third.wait_ready().await;
        let survivors = [&first, &third];
        for n in survivors {
            eventually_in(
                &format!(
                    "node {} takes DDL and writes after a kill at '{step}'",
                    n.node_id
                ),
                &survivors,
                || async {
                    let (s, _) = n
                        .sql(&format!(
                            "CREATE TABLE IF NOT EXISTS t{step} (ts TIMESTAMP, v DOUBLE)"
                        ))
                        .await;
                    let (w, _) = n.write("pre,k=b v=2 2\n").await;
                    (s == 200 && w == 204).then_some(())
                },
            )
            .await;
        }
        second.restart().await;
        eventually(&format!("three voters again after '{step}'"), || async {
            let v = nodes(&first).await;
            (v.len() == 3 && v.iter().all(|r| r.3 == "leader" || r.3 == "voter")).then_some(())
        })
        .await;
        assert_eq!(third.count("SELECT count(*) FROM pre").await, 2);
    }
}

/// Group 0 without a quorum (three of five nodes down) while a vshard keeps one: writes
/// to an existing table on that vshard still succeed (line protocol and SQL INSERT), DDL
/// fails with 503, and /health/ready answers 503 naming group 0, so a load balancer
/// moves traffic elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_existing_tables_need_no_group0_quorum_and_readiness_says_so() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dirs: Vec<_> = (1..=5).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let refs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let mut c = support::cluster(&refs).await;
    let all: Vec<&Node> = c.iter().collect();
    within("balanced", Duration::from_secs(180), &all, || {
        balanced(&c[0], 3)
    })
    .await;
    eventually("group 0 has five voters", || async {
        let v = nodes(&c[0]).await;
        (v.iter()
            .filter(|r| r.3 == "leader" || r.3 == "voter")
            .count()
            == 5)
            .then_some(())
    })
    .await;
    let (s, v) = c[0]
        .sql("CREATE TABLE ev (ts TIMESTAMP, k VARCHAR, v DOUBLE, PRIMARY KEY (k))")
        .await;
    assert_eq!(s, 200, "{v}");
    // A key whose vshard has replicas on nodes 1 and 2 (the survivors).
    let p = placement(&c[0]).await.expect("placement");
    let key = (0..10_000)
        .map(|i| format!("key{i}"))
        .find(|k| {
            let v = shoal_common::hash::vshard_for_key(k.as_bytes(), 16) as usize;
            p[v].contains(&1) && p[v].contains(&2)
        })
        .expect("a vshard on nodes 1 and 2");
    for n in c.iter_mut().skip(2) {
        n.kill9();
    }
    let survivor = &c[0];
    eventually("the vshard on nodes 1 and 2 takes writes", || async {
        let (s, _) = survivor
            .write(&format!("ev,k={key} v=1 1700000000000000000\n"))
            .await;
        (s == 204).then_some(())
    })
    .await;
    let (s, v) = survivor
        .sql(&format!(
            "INSERT INTO ev VALUES ('2024-01-01T00:00:00Z', '{key}', 2.0)"
        ))
        .await;
    assert_eq!(s, 200, "SQL INSERT into an existing table: {v}");
    let (s, v) = survivor
        .sql("CREATE TABLE nope (ts TIMESTAMP, v DOUBLE)")
        .await;
    assert_eq!(s, 503, "DDL needs group 0: {v}");
    eventually("/health/ready is 503 and names group 0", || async {
        let r = reqwest::get(survivor.url("/health/ready")).await.ok()?;
        let status = r.status().as_u16();
        let body = r.text().await.ok()?;
        (status == 503 && body.contains("group 0")).then_some(())
    })
    .await;
}
