#!/usr/bin/env python3
"""Loads the same ticks into Shoal, InfluxDB 1.x, ClickHouse and DuckDB, runs Q1-Q5 in each
one's dialect and prints one table (run through bench/compare.sh, which installs things).

Every server is started here on 127.0.0.1 in a temp dir and stopped by PID. Query times are
the median of 5 warm runs after one warm-up, wall clock at the client (servers: over HTTP,
results fetched in full; DuckDB: in-process, fetchall). Alongside the times, Q4's count is
kept per system so a wrong answer shows up next to a fast one.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

RUNS = 5
DAY0 = 1704153600  # 2024-01-02T00:00:00Z, gen_ticks.py's default start
NS = 10**9
H6, H7, END = (DAY0 + 6 * 3600) * NS, (DAY0 + 7 * 3600) * NS, (DAY0 + 86400) * NS
SYMBOL = "SYM0001"
BATCH_LINES = 5000
WRITERS = 2
STREAM_BATCH_ROWS = 100_000  # the two-stream load (ClickHouse's best shape): rows per POST


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load():
    return "/".join(open("/proc/loadavg").read().split()[:3])


def http(url, data=None, method=None, timeout=900):
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what, check, deadline_s=120):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


class Server:
    """A server process of ours; stopped by PID (SIGTERM, then SIGKILL after 30 s)."""

    def __init__(self, name, cmd, workdir):
        self.name = name
        self.log = open(os.path.join(workdir, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def timed(run):
    """One warm-up, then RUNS timed runs: (median s, min s, last result)."""
    result = run()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), result


def concurrent_posts(url, bodies, streams, ok_status):
    """POSTs every body, `streams` at a time, each answered with `ok_status`; returns the
    seconds it took."""
    lock, it, errors = threading.Lock(), iter(bodies), []

    def worker():
        while True:
            with lock:
                body = next(it, None)
            if body is None or errors:
                return
            status, out = http(url, body)
            if status != ok_status:
                errors.append(f"{status} {out[:300]!r}")

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError(errors[0])
    return time.perf_counter() - t


# ---------------------------------------------------------------- Shoal


def bench_shoal(a, work):
    port = free_port()
    data = os.path.join(work, "shoal-data")
    cmd = [a.shoal, "start", "--data-dir", data, "--http-addr", f"127.0.0.1:{port}",
           "--pg-addr", f"127.0.0.1:{free_port()}", "--rpc-addr", f"127.0.0.1:{free_port()}",
           "--gossip-addr", f"127.0.0.1:{free_port()}"]
    base = f"http://127.0.0.1:{port}"

    def start(name, argv):
        """Starts a node and waits until it is ready (stopping it if it never is)."""
        s = Server(name, argv, work)
        try:
            wait_until(f"{name} ready", lambda: http(base + "/health/ready")[0] == 200)
        except BaseException:
            s.stop()
            raise
        return s

    srv = start("shoal", cmd)
    try:
        out = os.path.join(work, "shoal-ingest.json")
        ld = load()
        subprocess.run([a.shoal, "bench", "ingest", "--host", f"127.0.0.1:{port}", "--file",
                        a.prefix + ".lp", "--writers", str(WRITERS), "--batch", str(BATCH_LINES),
                        "--json", out], check=True)
        ingest = json.load(open(out))["rows_per_sec"]
        queries = {
            "Q1": "SELECT symbol, count(*) FROM trades GROUP BY symbol",
            "Q2": "SELECT symbol, avg(price), max(price), sum(size) FROM trades GROUP BY symbol",
            "Q3": "SELECT date_bin(INTERVAL '1 minute', ts) AS bar, first_value(price ORDER BY ts), "
                  "max(price), min(price), last_value(price ORDER BY ts), sum(size) FROM trades "
                  f"WHERE symbol = '{SYMBOL}' GROUP BY bar ORDER BY bar",
            "Q4": "SELECT count(*), avg(price), sum(size) FROM trades "
                  "WHERE ts >= '2024-01-02T06:00:00Z' AND ts < '2024-01-02T07:00:00Z'",
            "Q5": "SELECT date_bin(INTERVAL '1 minute', ts) AS m, avg(price) FROM trades "
                  "WHERE ts >= '2024-01-02T00:00:00Z' AND ts < '2024-01-03T00:00:00Z' "
                  "GROUP BY m ORDER BY m",
        }

        def run(sql):
            def go():
                s, body = http(base + "/v1/sql?format=csv", sql.encode())
                if s != 200:
                    raise RuntimeError(f"shoal: {s} {body[:300]!r}")
                return body
            return go

        res = {"ingest_rows_s": ingest, "ingest_load": ld, "what": "HTTP line protocol, "
               f"{WRITERS} writers, {BATCH_LINES}-line batches, fsync per batch"}
        for q, sql in queries.items():
            med, mn, body = timed(run(sql))
            res[q] = med
            if q == "Q4":
                res["q4_count"] = int(body.decode().splitlines()[1].split(",")[0])
        res["query_load"] = load()
        # Stopped gracefully (every hot buffer flushed to Parquet) and started again: the
        # same queries over flushed data, and each one's first run after the restart.
        srv.stop()
        srv = start("shoal-restarted", cmd)
        after = {}
        for q, sql in queries.items():
            t = time.perf_counter()
            run(sql)()
            after[q + "_first"] = time.perf_counter() - t
            after[q] = timed(run(sql))[0]
        # Each query again as the very first one of a restarted process: nothing decoded
        # or planned before it, and the process's own first-request costs on top.
        for q, sql in queries.items():
            srv.stop()
            srv = start("shoal-restarted", cmd)
            t = time.perf_counter()
            run(sql)()
            after[q + "_cold"] = time.perf_counter() - t
        res["after_restart"] = after
        # ClickHouse's two-stream load shape (two concurrent 100k-line POSTs), into a fresh
        # data directory, still fsyncing every acknowledged batch.
        srv.stop()
        settle(a.prefix)
        cmd2 = [data + "-2" if c == data else c for c in cmd]
        srv = start("shoal-2-streams", cmd2)
        res["ingest_2_streams_load"] = load()
        subprocess.run([a.shoal, "bench", "ingest", "--host", f"127.0.0.1:{port}", "--file",
                        a.prefix + ".lp", "--writers", str(WRITERS), "--batch", str(STREAM_BATCH_ROWS),
                        "--json", out], check=True)
        res["ingest_2_streams_rows_s"] = json.load(open(out))["rows_per_sec"]
        return res
    finally:
        srv.stop()


# ---------------------------------------------------------------- InfluxDB 1.x


def batches_of(path, lines_per_batch):
    out, cur, n = [], [], 0
    with open(path, "rb") as f:
        for line in f:
            cur.append(line)
            n += 1
            if n == lines_per_batch:
                out.append(b"".join(cur))
                cur, n = [], 0
    if cur:
        out.append(b"".join(cur))
    return out


def bench_influxdb(a, work):
    influxd = shutil.which("influxd")
    if not influxd:
        return {"skip": "influxd not installed"}
    d = os.path.join(work, "influx")
    port = free_port()
    conf = os.path.join(work, "influxdb.conf")
    with open(conf, "w") as f:
        f.write(f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[monitor]
  store-enabled = false
""")
    srv = Server("influxdb", [influxd, "-config", conf], work)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until("influxd ping", lambda: http(base + "/ping")[0] == 204)
        http(base + "/query", urllib.parse.urlencode({"q": "CREATE DATABASE bench"}).encode())
        batches = batches_of(a.prefix + ".lp", BATCH_LINES)
        ld = load()
        secs = concurrent_posts(base + "/write?db=bench&precision=ns", batches, WRITERS, 204)
        day = "time >= '2024-01-02T00:00:00Z' AND time < '2024-01-03T00:00:00Z'"
        queries = {
            "Q1": "SELECT count(price) FROM trades GROUP BY symbol",
            "Q2": "SELECT mean(price), max(price), sum(size) FROM trades GROUP BY symbol",
            "Q3": "SELECT first(price), max(price), min(price), last(price), sum(size) FROM trades "
                  f"WHERE symbol='{SYMBOL}' AND {day} GROUP BY time(1m)",
            "Q4": "SELECT count(price), mean(price), sum(size) FROM trades WHERE "
                  "time >= '2024-01-02T06:00:00Z' AND time < '2024-01-02T07:00:00Z'",
            "Q5": f"SELECT mean(price) FROM trades WHERE {day} GROUP BY time(1m)",
        }

        def run(q):
            def go():
                s, body = http(base + "/query?" + urllib.parse.urlencode({"db": "bench", "q": q}))
                if s != 200 or b'"error"' in body:
                    raise RuntimeError(f"influxdb: {s} {body[:300]!r}")
                return body
            return go

        res = {"ingest_rows_s": a.rows / secs, "ingest_load": ld,
               "what": f"HTTP line protocol, {WRITERS} writers, {BATCH_LINES}-line batches, WAL fsync"}
        for q, sql in queries.items():
            med, mn, body = timed(run(sql))
            res[q] = med
            if q == "Q4":
                res["q4_count"] = json.loads(body)["results"][0]["series"][0]["values"][0][1]
        res["query_load"] = load()
        return res
    finally:
        srv.stop()


# ---------------------------------------------------------------- ClickHouse


def bench_clickhouse(a, work):
    server = shutil.which("clickhouse-server") or shutil.which("clickhouse")
    if not server or not os.path.exists("/etc/clickhouse-server/config.xml"):
        return {"skip": "clickhouse-server not installed"}
    d = os.path.join(work, "ch")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    cmd = [server] + (["server"] if server.endswith("/clickhouse") else []) + [
        "--config-file=/etc/clickhouse-server/config.xml", "--",
        f"--path={d}/", f"--tmp_path={d}/tmp/", f"--user_files_path={d}/user_files/",
        f"--format_schema_path={d}/format_schemas/",
        f"--http_port={port}", f"--tcp_port={free_port()}",
        f"--interserver_http_port={free_port()}", "--listen_host=127.0.0.1",
        f"--logger.log={d}/server.log", f"--logger.errorlog={d}/error.log"]
    srv = Server("clickhouse", cmd, work)
    try:
        base = f"http://127.0.0.1:{port}/"

        def q(sql, data=None):
            url = base + "?" + urllib.parse.urlencode({"query": sql}) if data is not None else base
            s, body = http(url, data if data is not None else sql.encode())
            if s != 200:
                raise RuntimeError(f"clickhouse: {s} {body[:300]!r}")
            return body

        wait_until("clickhouse ping", lambda: http(base + "ping")[0] == 200)
        q("CREATE TABLE trades (ts UInt64, symbol String, price Float64, size Int64, side String, "
          "t DateTime MATERIALIZED toDateTime(intDiv(ts, 1000000000))) ENGINE = MergeTree() "
          "PARTITION BY toDate(t) ORDER BY (symbol, ts)")
        ld = load()
        t = time.perf_counter()
        # One stream of the whole TSV file (curl streams it; no fsync: ClickHouse's default).
        subprocess.run(["curl", "-sS", "--fail", "--data-binary", "@" + a.prefix + ".tsv",
                        base + "?" + urllib.parse.urlencode(
                            {"query": "INSERT INTO trades (ts, symbol, price, size, side) FORMAT TabSeparated"})],
                       check=True)
        secs = time.perf_counter() - t
        queries = {
            "Q1": "SELECT symbol, count() FROM trades GROUP BY symbol",
            "Q2": "SELECT symbol, avg(price), max(price), sum(size) FROM trades GROUP BY symbol",
            "Q3": "SELECT toStartOfMinute(t) m, argMin(price, ts), max(price), min(price), "
                  f"argMax(price, ts), sum(size) FROM trades WHERE symbol = '{SYMBOL}' GROUP BY m ORDER BY m",
            "Q4": f"SELECT count(), avg(price), sum(size) FROM trades WHERE ts >= {H6} AND ts < {H7}",
            "Q5": f"SELECT toStartOfMinute(t) m, avg(price) FROM trades WHERE ts >= {DAY0 * NS} "
                  f"AND ts < {END} GROUP BY m ORDER BY m",
        }
        res = {"ingest_rows_s": a.rows / secs, "ingest_load": ld,
               "what": "HTTP TSV, 1 stream, no fsync"}
        for name, sql in queries.items():
            med, mn, body = timed(lambda: q(sql + " FORMAT TabSeparated"))
            res[name] = med
            if name == "Q4":
                res["q4_count"] = int(body.split(b"\t")[0])
        res["query_load"] = load()
        # Its best rate in the peer baselines: two concurrent streams of 100k-row POSTs.
        q("TRUNCATE TABLE trades")
        chunks = batches_of(a.prefix + ".tsv", STREAM_BATCH_ROWS)
        insert = base + "?" + urllib.parse.urlencode(
            {"query": "INSERT INTO trades (ts, symbol, price, size, side) FORMAT TabSeparated"})
        res["ingest_2_streams_load"] = load()
        res["ingest_2_streams_rows_s"] = a.rows / concurrent_posts(insert, chunks, WRITERS, 200)
        if int(q("SELECT count() FROM trades FORMAT TabSeparated")) != a.rows:
            raise RuntimeError("clickhouse: the two-stream load lost rows")
        return res
    finally:
        srv.stop()


# ---------------------------------------------------------------- DuckDB


def bench_duckdb(a, work):
    try:
        import duckdb
    except ImportError:
        return {"skip": "duckdb not installed"}
    con = duckdb.connect()
    ld = load()
    t = time.perf_counter()
    con.execute("CREATE TABLE trades AS SELECT CAST(CAST(ts AS TIMESTAMP_NS) AS TIMESTAMP) AS ts, "
                f"symbol, price, size, side FROM read_parquet('{a.prefix}.parquet')")
    secs = time.perf_counter() - t
    day = "ts >= TIMESTAMP '2024-01-02 00:00:00' AND ts < TIMESTAMP '2024-01-03 00:00:00'"
    queries = {
        "Q1": "SELECT symbol, count(*) FROM trades GROUP BY symbol",
        "Q2": "SELECT symbol, avg(price), max(price), sum(size) FROM trades GROUP BY symbol",
        "Q3": "SELECT date_trunc('minute', ts) m, arg_min(price, ts), max(price), min(price), "
              f"arg_max(price, ts), sum(size) FROM trades WHERE symbol = '{SYMBOL}' GROUP BY m ORDER BY m",
        "Q4": "SELECT count(*), avg(price), sum(size) FROM trades WHERE "
              "ts >= TIMESTAMP '2024-01-02 06:00:00' AND ts < TIMESTAMP '2024-01-02 07:00:00'",
        "Q5": f"SELECT date_trunc('minute', ts) m, avg(price) FROM trades WHERE {day} GROUP BY m ORDER BY m",
    }
    res = {"ingest_rows_s": a.rows / secs, "ingest_load": ld,
           "what": "in-process CREATE TABLE AS read_parquet (in memory; not comparable to a server)"}
    for name, sql in queries.items():
        med, mn, rows = timed(lambda: con.execute(sql).fetchall())
        res[name] = med
        if name == "Q4":
            res["q4_count"] = rows[0][0]
    res["query_load"] = load()
    return res


def settle(prefix):
    """Gives every system the same start: dirty pages written back and the page cache
    dropped (as root), so one system's writeback does not slow the next, then the input
    files read once so that no loader waits on the disk."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        print(f"page cache left as it is ({e})", flush=True)
    for ext in ("lp", "tsv", "parquet"):
        with open(f"{prefix}.{ext}", "rb") as f:
            while f.read(1 << 24):
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--systems", default="shoal influxdb clickhouse duckdb")
    ap.add_argument("--shoal", default="target/release/shoal")
    ap.add_argument("--out", default="bench-results.json")
    a = ap.parse_args()
    fns = {"shoal": bench_shoal, "influxdb": bench_influxdb, "clickhouse": bench_clickhouse,
           "duckdb": bench_duckdb}
    results = {}
    with tempfile.TemporaryDirectory(prefix="shoal-compare-") as work:
        for name in a.systems.split():
            print(f"== {name}", flush=True)
            settle(a.prefix)
            try:
                results[name] = fns[name](a, work)
            except Exception as e:  # one system failing must not hide the others
                results[name] = {"skip": f"failed: {e}"}
            print(json.dumps(results[name]), flush=True)
    json.dump({"rows": a.rows, "results": results}, open(a.out, "w"), indent=1)

    qs = ["Q1", "Q2", "Q3", "Q4", "Q5"]
    print(f"\n{a.rows:,} rows; query times are warm medians of {RUNS} runs\n")
    print("| system | ingest rows/s | " + " | ".join(qs) + " | Q4 count |")
    print("|---|---:|" + "---:|" * len(qs) + "---:|")
    for name, r in results.items():
        if "skip" in r:
            print(f"| {name} | skipped: {r['skip']} |" + " |" * (len(qs) + 1))
            continue
        cells = [f"{r[q] * 1000:.1f} ms" for q in qs]
        print(f"| {name} | {r['ingest_rows_s']:,.0f} | " + " | ".join(cells) + f" | {r.get('q4_count')} |")
        if "ingest_2_streams_rows_s" in r:
            print(f"| {name}, {WRITERS} streams of {STREAM_BATCH_ROWS // 1000}k-row POSTs | "
                  f"{r['ingest_2_streams_rows_s']:,.0f} |" + " |" * (len(qs) + 1))
        if "after_restart" in r:
            after = r["after_restart"]
            cells = [f"{after[q] * 1000:.1f} ms" for q in qs]
            print(f"| {name}, after a restart | — | " + " | ".join(cells) + " | |")
            cells = [f"{after[q + '_first'] * 1000:.1f} ms" for q in qs]
            print(f"| {name}, first run after the restart | — | " + " | ".join(cells) + " | |")
            cells = [f"{after[q + '_cold'] * 1000:.1f} ms" for q in qs]
            print(f"| {name}, each as the first query of a restarted process | — | "
                  + " | ".join(cells) + " | |")
    s = results.get("shoal", {})
    if "skip" not in s and s:
        print("\nShoal relative to each peer (ingest: Shoal ÷ peer, higher is better; "
              "queries: Shoal time ÷ peer time, lower is better)\n")
        print("| peer | ingest | " + " | ".join(qs) + " |")
        print("|---|---:|" + "---:|" * len(qs))
        for name, r in results.items():
            if name == "shoal" or "skip" in r:
                continue
            cells = [f"{s[q] / r[q]:.2f}×" for q in qs]
            print(f"| {name} | {s['ingest_rows_s'] / r['ingest_rows_s']:.2f}× | " + " | ".join(cells) + " |")
            if "ingest_2_streams_rows_s" in r and "ingest_2_streams_rows_s" in s:
                ratio = s["ingest_2_streams_rows_s"] / r["ingest_2_streams_rows_s"]
                print(f"| {name}, both loading {WRITERS} streams of {STREAM_BATCH_ROWS // 1000}k-row POSTs "
                      f"| {ratio:.2f}× |" + " |" * len(qs))


if __name__ == "__main__":
    main()
