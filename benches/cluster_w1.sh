#!/usr/bin/env bash
# W1 on the local engine vs on a Ballista cluster of 1 scheduler + 2 executors on loopback,
# same machine, same session. Usage: benches/cluster_w1.sh [DIR] [RUNS] [TASKS_PER_EXECUTOR]
# Prints the wall time of each run (cold: --no-reuse), the ratio of medians, the cluster
# job's stage lines from --explain (rows, compute time, bytes per operator), and checks that
# both outputs are identical.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-/tmp/w1}; runs=${2:-3}; tasks=${3:-1}
[ -f "$dir/events.parquet" ] || { echo "run benches/w1.sh first (it generates $dir)"; exit 1; }
(cd "$here" && cargo build --release -p quiver-cli)
q="$here/target/release/quiver"
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
"$q" scheduler --bind 127.0.0.1:0 > "$work/scheduler.out" 2>/dev/null & pids+=($!)
until [ -s "$work/scheduler.out" ]; do sleep 0.1; done
url=$(head -1 "$work/scheduler.out" | sed 's/.* on //')
for i in 1 2; do
  "$q" executor --scheduler "$url" --concurrent-tasks "$tasks" > "$work/executor$i.out" 2>/dev/null & pids+=($!)
done
until [ -s "$work/executor1.out" ] && [ -s "$work/executor2.out" ]; do sleep 0.1; done
sed "s|path: events.parquet|path: $dir/events.parquet|" "$here/../shared/bench/quiver.yaml" > "$work/quiver.yaml"
times_local=(); times_cluster=()
for i in $(seq "$runs"); do
  for where in local cluster; do
    extra=(); [ "$where" = cluster ] && extra=(--cluster "$url" --explain)
    s=$(date +%s.%N)
    "$q" join --repo "$work" --spine "$dir/labels.parquet" --spine-timestamp ts --service w1 \
      --out "$work/$where.parquet" --no-reuse --partitions 2 "${extra[@]}" > "$work/$where.log" 2>&1
    e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc)
    echo "$where run $i: $t s"
    if [ "$where" = local ]; then times_local+=("$t"); else times_cluster+=("$t"); fi
  done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ml=$(median "${times_local[@]}"); mc=$(median "${times_cluster[@]}")
echo "median local $ml s, cluster $mc s, ratio cluster/local $(echo "scale=2; $mc / $ml" | bc)"
grep -E "job |stage |runs on|staged" "$work/cluster.log" || true
cmp "$work/local.parquet" "$work/cluster.parquet" && echo "outputs identical"
