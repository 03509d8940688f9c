#!/usr/bin/env python3
"""Idle CPU of a balanced Shoal cluster: starts N `shoal` processes on 127.0.0.1 (the
first bootstraps with --vshards V, the rest join), waits until the placement is balanced
(no move under way, every vshard on three replicas, every node within one of the mean,
every replica quiesced), then reads each process' CPU time from /proc over a window and
prints it as a share of one core. Nothing is asserted; the numbers go in
docs/benchmarks.md.

    python3 bench/idle_cpu.py --bin target/release/shoal --nodes 5 --vshards 64 --window 60
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sql(http, q):
    req = urllib.request.Request(f"http://{http}/v1/sql", data=q.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["rows"]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def wait(what, f, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if f():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/shoal")
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--vshards", type=int, default=64)
    ap.add_argument("--window", type=int, default=60)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shoal-idle-")
    procs = []
    try:
        seed = None
        for i in range(a.nodes):
            http, rpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            args = [a.bin, "start", "--data-dir", f"{tmp}/n{i+1}", "--http-addr", http,
                    "--pg-addr", f"127.0.0.1:{free_port()}", "--rpc-addr", rpc,
                    "--gossip-addr", f"127.0.0.1:{free_port()}"]
            if seed:
                args += ["--join", seed]
            else:
                args += ["--vshards", str(a.vshards)]
                seed = rpc
            log = open(f"{tmp}/n{i+1}.log", "w")
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
            procs.append((p, http))
            wait(f"node {i+1} ready", lambda: urllib.request.urlopen(
                f"http://{http}/health/ready", timeout=2).status == 200)
        first = procs[0][1]

        def balanced():
            moving = sql(first, "SELECT count(*) FROM system.moves WHERE state IN "
                                "('PENDING', 'CATCHING_UP', 'SWAPPING')")[0][0]
            placed = sql(first, "SELECT replicas FROM system.shards")
            counts = [r[0] for r in sql(first, "SELECT replicas FROM system.nodes "
                                               "WHERE lifecycle = 'ACTIVE'")]
            awake = sum(sql(h, "SELECT count(*) FROM system.replicas WHERE NOT quiesced")[0][0]
                        for _, h in procs)
            return (moving == 0 and all(len(r[0].split(",")) == 3 for r in placed)
                    and len(counts) == a.nodes and max(counts) - min(counts) <= 1 and awake == 0)
        t0 = time.time()
        wait("balanced and quiet", balanced)
        settle = time.time() - t0
        before = [cpu_ticks(p.pid) for p, _ in procs]
        time.sleep(a.window)
        after = [cpu_ticks(p.pid) for p, _ in procs]
        shares = [(y - x) / TICKS / a.window * 100 for x, y in zip(before, after)]
        counts = sql(first, "SELECT node_id, replicas, leaderships FROM system.nodes ORDER BY node_id")
        print(json.dumps({
            "nodes": a.nodes, "vshards": a.vshards, "window_s": a.window,
            "balanced_and_quiet_after_s": round(settle, 1),
            "replicas_and_leaderships": counts,
            "idle_cpu_percent_of_a_core": [round(s, 2) for s in shares],
        }, indent=2))
    finally:
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
