//! Partial aggregates read straight off a vshard's storage (`shoal_query::fastagg`) give the
//! answers the data says, computed here independently: over the hot buffer (plain and merged
//! dictionary-encoded chunks), over flushed Parquet parts, and where a rewritten point makes
//! the scan resolve repeats.

mod support;

use std::collections::BTreeMap;

use support::Node;

const T0: i64 = 1_704_067_200_000_000_000;
const SEC: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SEC;

#[derive(Clone, Debug)]
struct Tick {
    ts: i64,
    symbol: Option<String>,
    side: &'static str,
    price: f64,
    size: i64,
    venue: Option<&'static str>,
}

impl Tick {
    fn line(&self) -> String {
        let mut l = String::from("trades");
        if let Some(s) = &self.symbol {
            l.push_str(&format!(",symbol={s}"));
        }
        l.push_str(&format!(
            ",side={} price={},size={}i",
            self.side, self.price, self.size
        ));
        if let Some(v) = self.venue {
            l.push_str(&format!(",venue=\"{v}\""));
        }
        l.push_str(&format!(" {}\n", self.ts));
        l
    }

    /// The point's identity: a rewrite with the same tags and ts replaces it.
    fn key(&self) -> (i64, Option<String>, &'static str) {
        (self.ts, self.symbol.clone(), self.side)
    }
}

fn ticks(n: usize) -> Vec<Tick> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            Tick {
                ts: T0 + i as i64 * SEC,
                // one row in 37 has no symbol tag at all
                symbol: (r % 37 != 0).then(|| format!("s{:02}", r % 11)),
                side: if (r >> 8) % 3 == 0 { "S" } else { "B" },
                // quarters add exactly in f64
                price: 100.0 + ((r >> 16) % 400) as f64 / 4.0,
                size: ((r >> 32) % 50) as i64 + 1,
                venue: match (r >> 40) % 4 {
                    0 => None,
                    1 => Some("X"),
                    _ => Some("Y"),
                },
            }
        })
        .collect()
}

async fn rows(node: &Node, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let (status, v) = node.sql(sql).await;
    assert_eq!(status, 200, "{sql}: {v}");
    serde_json::from_value(v["rows"].clone()).unwrap_or_else(|e| panic!("{sql}: {e}: {v}"))
}

/// The value of counter `name` in EXPLAIN ANALYZE output (summed over partitions; large
/// counts print as `9.00 K`).
fn metric(plan: &str, name: &str) -> u64 {
    let at = plan
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {plan}"));
    let rest = &plan[at + name.len() + 1..];
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let value: f64 = num
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a count in {plan}"));
    let scale = match rest[num.len()..]
        .strip_prefix(' ')
        .and_then(|r| r.chars().next())
    {
        Some('K') => 1e3,
        Some('M') => 1e6,
        Some('B') => 1e9,
        _ => 1.0,
    };
    (value * scale).round() as u64
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn text(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Checks Q1–Q5-style queries and a few more shapes against `data`.
async fn check(node: &Node, data: &[Tick], phase: &str) {
    // count, avg, max, sum by symbol (a tag; null symbol is its own group)
    let mut by_symbol: BTreeMap<Option<String>, (i64, f64, f64, i64)> = BTreeMap::new();
    for t in data {
        let e = by_symbol
            .entry(t.symbol.clone())
            .or_insert((0, 0.0, f64::MIN, 0));
        e.0 += 1;
        e.1 += t.price;
        e.2 = e.2.max(t.price);
        e.3 += t.size;
    }
    let got = rows(
        node,
        "SELECT symbol, count(*), avg(price), max(price), sum(size) FROM trades GROUP BY symbol",
    )
    .await;
    assert_eq!(got.len(), by_symbol.len(), "{phase}: groups {got:?}");
    for r in &got {
        let want = by_symbol
            .get(&text(&r[0]))
            .unwrap_or_else(|| panic!("{phase}: unexpected group {r:?}"));
        assert_eq!(r[1].as_i64(), Some(want.0), "{phase}: count {r:?}");
        let avg = r[2].as_f64().expect("avg");
        assert!(
            close(avg, want.1 / want.0 as f64),
            "{phase}: avg {r:?} vs {want:?}"
        );
        assert_eq!(r[3].as_f64(), Some(want.2), "{phase}: max {r:?}");
        assert_eq!(r[4].as_i64(), Some(want.3), "{phase}: sum {r:?}");
    }

    // count(*) alone reads no column at all
    let got = rows(node, "SELECT count(*) FROM trades").await;
    assert_eq!(
        got[0][0].as_i64(),
        Some(data.len() as i64),
        "{phase}: count(*)"
    );
    let got = rows(
        node,
        "SELECT side, count(*) FROM trades GROUP BY side ORDER BY side",
    )
    .await;
    let b = data.iter().filter(|t| t.side == "B").count() as i64;
    assert_eq!(got[0][1].as_i64(), Some(b), "{phase}: count(*) by side");

    // two keys, with a filter on one of them
    let mut by_two: BTreeMap<(Option<String>, String), i64> = BTreeMap::new();
    for t in data.iter().filter(|t| t.size > 10) {
        *by_two
            .entry((t.symbol.clone(), t.side.to_string()))
            .or_default() += 1;
    }
    let got = rows(
        node,
        "SELECT symbol, side, count(*) FROM trades WHERE size > 10 GROUP BY symbol, side",
    )
    .await;
    let got: BTreeMap<(Option<String>, String), i64> = got
        .iter()
        .map(|r| {
            (
                (text(&r[0]), text(&r[1]).expect("side")),
                r[2].as_i64().expect("count"),
            )
        })
        .collect();
    assert_eq!(got, by_two, "{phase}: by (symbol, side)");

    // a string field (not a tag) as the key
    let mut by_venue: BTreeMap<Option<String>, i64> = BTreeMap::new();
    for t in data {
        *by_venue.entry(t.venue.map(str::to_string)).or_default() += t.size;
    }
    let got: BTreeMap<Option<String>, i64> =
        rows(node, "SELECT venue, sum(size) FROM trades GROUP BY venue")
            .await
            .iter()
            .map(|r| (text(&r[0]), r[1].as_i64().expect("sum")))
            .collect();
    assert_eq!(got, by_venue, "{phase}: by venue");

    // Q3: one-minute OHLC bars of one symbol (first/last by ts)
    let mut bars: BTreeMap<i64, (f64, f64, f64, f64, i64)> = BTreeMap::new();
    let mut sorted: Vec<&Tick> = data
        .iter()
        .filter(|t| t.symbol.as_deref() == Some("s03"))
        .collect();
    sorted.sort_by_key(|t| t.ts);
    for t in sorted {
        let b = (t.ts - T0).div_euclid(MINUTE) * MINUTE + T0;
        let e = bars
            .entry(b)
            .or_insert((t.price, f64::MIN, f64::MAX, t.price, 0));
        e.1 = e.1.max(t.price);
        e.2 = e.2.min(t.price);
        e.3 = t.price;
        e.4 += t.size;
    }
    let got = rows(
        node,
        "SELECT CAST(bar AS BIGINT), o, h, l, c, v FROM (SELECT date_bin(INTERVAL '1 minute', ts) AS bar, \
         first_value(price ORDER BY ts) AS o, max(price) AS h, min(price) AS l, \
         last_value(price ORDER BY ts) AS c, sum(size) AS v \
         FROM trades WHERE symbol = 's03' GROUP BY bar) ORDER BY 1",
    )
    .await;
    assert_eq!(got.len(), bars.len(), "{phase}: bars");
    for (r, (b, want)) in got.iter().zip(&bars) {
        assert_eq!(r[0].as_i64(), Some(*b), "{phase}: bar start {r:?}");
        let f = |i: usize| r[i].as_f64().expect("price");
        assert_eq!(
            (f(1), f(2), f(3), f(4), r[5].as_i64().expect("volume")),
            *want,
            "{phase}: bar {r:?}"
        );
    }

    // Q4: a global aggregate over a time window; the second covers a whole hour bucket
    // (a row group the filter can skip) and parts of its neighbours.
    for (lo, hi) in [
        (T0 + 1000 * SEC, T0 + 3100 * SEC),
        (T0 + 3000 * SEC, T0 + 7500 * SEC),
    ] {
        q4(node, data, lo, hi, phase).await;
    }

    // Q5: per-minute count and sum over everything, with an origin off the minute
    let origin = T0 + 30 * SEC;
    let mut minutes: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for t in data {
        let e = minutes
            .entry((t.ts - origin).div_euclid(MINUTE) * MINUTE + origin)
            .or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    let got: BTreeMap<i64, (i64, i64)> = rows(
        node,
        &format!(
            "SELECT CAST(m AS BIGINT), n, s FROM (SELECT \
             date_bin(INTERVAL '60 seconds', ts, to_timestamp_nanos({origin})) AS m, \
             count(*) AS n, sum(size) AS s FROM trades GROUP BY m)"
        ),
    )
    .await
    .iter()
    .map(|r| {
        (
            r[0].as_i64().expect("minute"),
            (r[1].as_i64().expect("count"), r[2].as_i64().expect("sum")),
        )
    })
    .collect();
    assert_eq!(got, minutes, "{phase}: by minute");
}

async fn q4(node: &Node, data: &[Tick], lo: i64, hi: i64, phase: &str) {
    let window: Vec<&Tick> = data.iter().filter(|t| t.ts >= lo && t.ts < hi).collect();
    let got = rows(
        node,
        &format!(
            "SELECT count(*), sum(size), avg(price) FROM trades \
             WHERE ts >= to_timestamp_nanos({lo}) AND ts < to_timestamp_nanos({hi})"
        ),
    )
    .await;
    assert_eq!(got[0][0].as_i64(), Some(window.len() as i64), "{phase}: Q4");
    assert_eq!(
        got[0][1].as_i64(),
        Some(window.iter().map(|t| t.size).sum::<i64>()),
        "{phase}: Q4 sum"
    );
    let avg = window.iter().map(|t| t.price).sum::<f64>() / window.len() as f64;
    assert!(
        close(got[0][2].as_f64().expect("avg"), avg),
        "{phase}: Q4 avg {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_aggregates_off_storage_match_the_data() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = Node::start(dir.path(), &[]).await;
    let mut data = ticks(9000);
    // Many small requests: the hot buffer merges them into dictionary-encoded chunks.
    for chunk in data.chunks(90) {
        let body: String = chunk.iter().map(Tick::line).collect();
        assert_eq!(node.write(&body).await.0, 204);
    }
    // The shapes the rule takes: tag keys, time bins (with a filter), no key at all.
    for q in [
        "SELECT symbol, count(*) FROM trades GROUP BY symbol",
        "SELECT date_bin(INTERVAL '1 minute', ts) AS m, max(price) FROM trades \
         WHERE symbol = 's03' GROUP BY m",
        "SELECT count(*), avg(price) FROM trades WHERE ts >= to_timestamp_nanos(0)",
    ] {
        let (status, plan) = node.sql(&format!("EXPLAIN {q}")).await;
        assert_eq!(status, 200, "{plan}");
        assert!(
            plan.to_string().contains("ShardAggregateExec"),
            "{q}: {plan}"
        );
    }
    check(&node, &data, "hot").await;

    // A graceful stop flushes everything to Parquet.
    node.restart_graceful().await;
    check(&node, &data, "flushed").await;

    // EXPLAIN ANALYZE shows what the vshards read; once a chunk has been decoded twice
    // (admission on the second decode), repeats come from the column cache.
    let q = "EXPLAIN ANALYZE SELECT symbol, avg(price) FROM trades GROUP BY symbol";
    for _ in 0..2 {
        assert_eq!(node.sql(q).await.0, 200);
    }
    let (status, plan) = node.sql(q).await;
    assert_eq!(status, 200, "{plan}");
    let plan = plan.to_string();
    assert!(metric(&plan, "parts_read") > 0, "{plan}");
    assert_eq!(metric(&plan, "part_rows"), data.len() as u64, "{plan}");
    assert!(metric(&plan, "chunks_cached") > 0, "{plan}");
    assert_eq!(metric(&plan, "chunks_decoded"), 0, "{plan}");

    // Over one whole hour bucket, only the time filter reads `ts` and every row of the
    // bucket's row groups passes it: they are read without their `ts` chunk (two chunks
    // each, not three). Asking for max(ts) over the same rows reads it again.
    let hour = 3600 * SEC;
    let chunks = |plan: &str| metric(plan, "chunks_cached") + metric(plan, "chunks_decoded");
    let window = format!(
        "FROM trades WHERE ts >= to_timestamp_nanos({}) AND ts < to_timestamp_nanos({})",
        T0 + hour,
        T0 + 2 * hour
    );
    let (status, without_ts) = node
        .sql(&format!(
            "EXPLAIN ANALYZE SELECT count(*), avg(price), sum(size) {window}"
        ))
        .await;
    assert_eq!(status, 200, "{without_ts}");
    let (status, with_ts) = node
        .sql(&format!(
            "EXPLAIN ANALYZE SELECT count(*), avg(price), sum(size), max(ts) {window}"
        ))
        .await;
    assert_eq!(status, 200, "{with_ts}");
    let (without_ts, with_ts) = (without_ts.to_string(), with_ts.to_string());
    assert_eq!(metric(&without_ts, "part_rows"), 3600, "{without_ts}");
    assert!(chunks(&without_ts) > 0, "{without_ts}");
    assert_eq!(
        chunks(&without_ts) * 3,
        chunks(&with_ts) * 2,
        "{without_ts}\n{with_ts}"
    );

    // Rewrite every 7th point with another price and size: the flushed versions are
    // replaced, so the scan resolves repeats in those time ranges.
    let mut rewrite = String::new();
    for t in data.iter_mut().step_by(7) {
        t.price += 1000.0;
        t.size += 1000;
        rewrite.push_str(&t.line());
    }
    assert_eq!(node.write(&rewrite).await.0, 204);
    let keys: std::collections::HashSet<_> = data.iter().map(Tick::key).collect();
    assert_eq!(keys.len(), data.len(), "the generator repeats no point");
    check(&node, &data, "rewritten").await;
}
