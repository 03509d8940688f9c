#!/usr/bin/env bash
# Shoal against InfluxDB 1.x, ClickHouse and DuckDB on this machine, same data, same queries.
#
#   bench/compare.sh                 # 10 M rows (the headline figures)
#   ROWS=2000000 bench/compare.sh    # a quicker run
#   SYSTEMS="shoal duckdb" bench/compare.sh
#
# Installs what is missing: InfluxDB and ClickHouse from Debian's packages (apt, as root),
# numpy/pyarrow/duckdb from PyPI into ~/.cache/shoal-bench-venv. Every server runs on
# 127.0.0.1 in a temp dir and is stopped by PID at the end. A system that cannot be
# installed is skipped with the reason printed. Before each system, as root, dirty pages
# are written back and the page cache is dropped (then the input files are read once), so
# one system's writeback does not slow the next. Shoal's queries run twice: right after
# ingest (data hot) and after a graceful restart (all Parquet, with each first run); then
# each once more as the very first query of a freshly restarted process.
# Results: one table on stdout, JSON in $OUT (default ./bench-results.json).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${ROWS:-10000000}"
SYSTEMS="${SYSTEMS:-shoal influxdb clickhouse duckdb}"
OUT="${OUT:-$PWD/bench-results.json}"
SHARED="${SHARED:-$PWD/../shared}"
VENV="${VENV:-$HOME/.cache/shoal-bench-venv}"
DATA="${DATA:-$HOME/.cache/shoal-bench-data}"

echo "== python: numpy, pyarrow, duckdb in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q numpy pyarrow duckdb

have_apt_pkg() { dpkg -s "$1" >/dev/null 2>&1; }
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "not root: cannot apt-get install $*" >&2
        return 1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq && APT_UPDATED=1
    fi
    # Debian's postinst scripts may try to start the services; we start our own.
    RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
case " $SYSTEMS " in *" influxdb "*)
    have_apt_pkg influxdb || apt_install influxdb || echo "SKIP influxdb: not installable"
esac
case " $SYSTEMS " in *" clickhouse "*)
    have_apt_pkg clickhouse-server || apt_install clickhouse-server clickhouse-client \
        || echo "SKIP clickhouse: not installable"
esac

case " $SYSTEMS " in *" shoal "*)
    echo "== cargo build --release"
    cargo build --release --bin shoal
esac

echo "== data: $ROWS rows (gen_ticks.py, seed 42) in $DATA"
mkdir -p "$DATA"
PREFIX="$DATA/ticks_$ROWS"
if [ ! -s "$PREFIX.lp" ] || [ ! -s "$PREFIX.tsv" ] || [ ! -s "$PREFIX.parquet" ]; then
    "$VENV/bin/python" "$SHARED/bench/gen_ticks.py" --rows "$ROWS" --format lp,tsv,parquet \
        --out-prefix "$PREFIX"
fi

# Wherever cargo puts its target directory (CARGO_TARGET_DIR, .cargo/config.toml).
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
    | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
exec "$VENV/bin/python" bench/compare.py --rows "$ROWS" --prefix "$PREFIX" \
    --systems "$SYSTEMS" --shoal "$TARGET_DIR/release/shoal" --out "$OUT"
