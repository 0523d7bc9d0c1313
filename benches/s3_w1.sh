#!/usr/bin/env bash
# W1 read from an S3-compatible server on loopback vs from local files, same machine, same
# session. The server is examples/s3_server.rs (s3s + s3s-fs, the tests' server) serving a
# bucket `quiver-w1` (S3 names have 3 to 63 characters) of hard links to DIR's files. Usage: benches/s3_w1.sh [DIR] [RUNS]
# Prints wall time of each run (cold: --no-reuse), the ratio of medians, and the bytes the
# server sent per run against the size of events.parquet.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-/tmp/w1}; runs=${2:-3}
[ -f "$dir/events.parquet" ] || { echo "run benches/w1.sh first (it generates $dir)"; exit 1; }
(cd "$here" && cargo build --release -p quiver-cli && cargo build --release --example s3_server)
q="$here/target/release/quiver"
work=$(mktemp -d); trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/root/quiver-w1" "$work/local" "$work/remote"
ln "$dir/events.parquet" "$dir/labels.parquet" "$work/root/quiver-w1/"
mkfifo "$work/ctl"
"$here/target/release/examples/s3_server" "$work/root" < "$work/ctl" > "$work/server.out" &
pid=$!
exec 3> "$work/ctl"
until [ -s "$work/server.out" ]; do sleep 0.1; done
endpoint=$(head -1 "$work/server.out")
served() { echo >&3; sleep 0.3; tail -1 "$work/server.out" | tr ' ' '\n' | grep "^quiver-w1=" | cut -d= -f2 || echo 0; }
sed "s|path: events.parquet|path: $dir/events.parquet|" "$here/../shared/bench/quiver.yaml" > "$work/local/quiver.yaml"
{ sed "s|path: events.parquet|path: \"s3://quiver-w1/events.parquet\"|" "$here/../shared/bench/quiver.yaml"
  echo "storage:"
  echo "  s3: { endpoint: \"$endpoint\", region: us-east-1, path_style: true, allow_http: true }"
} > "$work/remote/quiver.yaml"
export AWS_ACCESS_KEY_ID=quiver-test-key AWS_SECRET_ACCESS_KEY=quiver-test-secret-0123456789
size=$(stat -c %s "$dir/events.parquet")
for i in $(seq "$runs"); do
  for where in local remote; do
    before=$(served)
    s=$(date +%s.%N)
    "$q" join --repo "$work/$where" --spine "$dir/labels.parquet" --spine-timestamp ts --service w1 \
      --out "$work/$where.parquet" --no-reuse > "$work/$where.log" 2>&1 || { cat "$work/$where.log"; exit 1; }
    e=$(date +%s.%N)
    after=$(served)
    echo "$where run $i: $(echo "$e - $s" | bc) s, server sent $((after - before)) of $size bytes"
  done
done
cmp "$work/local.parquet" "$work/remote.parquet" && echo "outputs identical"
