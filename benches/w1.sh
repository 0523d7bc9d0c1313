#!/usr/bin/env bash
# Cross-tool benchmark W1 (../shared/bench): Quiver vs DuckDB and Polars on the same files,
# same machine, same session. Usage: benches/w1.sh [DIR] [PEERS...]
#   DIR defaults to /tmp/w1; PEERS default to "polars duckdb-join duckdb-window".
# Needs: python3 -m venv /tmp/benchenv && /tmp/benchenv/bin/pip install duckdb polars pyarrow numpy
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bench="$here/../shared/bench"
dir=${1:-/tmp/w1}; shift || true
peers=${*:-polars duckdb-join duckdb-window}
P=${PYTHON:-/tmp/benchenv/bin/python}
if [ ! -f "$dir/events.parquet" ]; then
  "$P" "$bench/gen.py" "$dir" --events 20000000 --users 20000 --labels 2000000
fi
cp "$bench/quiver.yaml" "$dir/"
(cd "$here" && cargo build --release -p quiver-cli)
q="$here/target/release/quiver"
rss() { grep "Maximum resident" "$1" | awk '{print $6/1024 " MB"}'; }
secs() { grep "Elapsed (wall" "$1" | awk '{print $8}'; }
echo "== Quiver's own stage timings (the floor: read + repartition, then the per-key sort)"
QUIVER_PROFILE=1 "$q" join --repo "$dir" --spine "$dir/labels.parquet" --spine-timestamp ts --service w1 \
  --out "$dir/quiver.parquet" --no-reuse 2>&1 | grep -vE "feature"
/usr/bin/time -v "$q" join --repo "$dir" --spine "$dir/labels.parquet" --spine-timestamp ts --service w1 \
  --out "$dir/quiver.parquet" --no-reuse 2> "$dir/quiver.time"
echo "quiver: $(secs "$dir/quiver.time") wall, peak $(rss "$dir/quiver.time")"
for e in $peers; do
  /usr/bin/time -v "$P" "$bench/peers.py" "$e" "$dir" "$dir/$e.parquet" 2> "$dir/$e.time"
  echo "$e: $(secs "$dir/$e.time") wall, peak $(rss "$dir/$e.time")"
  "$P" "$bench/compare.py" "$dir/quiver.parquet" "$dir/$e.parquet"
done
