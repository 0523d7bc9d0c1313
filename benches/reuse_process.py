#!/usr/bin/env python3
"""Reuse as users run it: the `quiver` binary, whole process, against `--no-reuse`.

Scenarios (issue 24; benches/README.md "Reuse, whole process"), on W1's 20 M events sorted by
time into 1 M-row row groups (event logs arrive in time order), features sum 30d, count 7d and
max 90d of `amount`:

- daily refresh: yesterday's training set was built for the labels up to 2025-12-01; today's
  spine is the same labels with one more day appended (and, `interleaved`, the same rows in
  the label file's order, the new day's rows scattered through it);
- rolling: the labels of the last 30 days, sorted by time, shifted by one day;
- exact repeat of yesterday's spine.

`--dense` runs the dense workload instead (issue 24): 20 M events over the 90 days before
2026-01-01 for 2 000 users (~110 events per user-day), sorted by time into 1 M-row row
groups, and the widening 30d -> 40d over two December spines: 100 k rows at random instants,
and daily snapshots (every user at every midnight of December, 62 k rows); the snapshots
rolled by a day (yesterday's 30d join was a day earlier); and the snapshots' 30d join with
nothing stored, where the gate may compute through day tiles to keep them (what that costs).

Each timed run starts from a catalog holding what yesterday's run stored (copied into place,
not timed), and its output is checked identical to the cold output before its time is
counted. Usage:

    python3 -m venv /tmp/benchenv && /tmp/benchenv/bin/pip install duckdb polars pyarrow numpy
    /tmp/benchenv/bin/python benches/reuse_process.py [DIR] [--runs N] [--quiver PATH]
                                                      [--touch-memory]

DIR (default /tmp/w1t, or /tmp/dense with --dense) is filled from W1 (../shared/bench/gen.py
into /tmp/w1) or generated (--dense) when empty.
"""
import argparse, datetime as dt, os, shutil, statistics, subprocess, sys, time

import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
YAML = """project: w1t
entities:
  user: { join_keys: [user_id] }
sources:
  events: { path: events.parquet, timestamp: event_ts }
feature_views:
  user_spend:
    entity: user
    source: events
    features:
      - { name: sum_30d, agg: sum, column: amount, window: 30d }
      - { name: count_7d, agg: count, column: amount, window: 7d }
      - { name: max_90d, agg: max, column: amount, window: 90d }
      - { name: max_30d, agg: max, column: amount, window: 30d }
      - { name: sum_40d, agg: sum, column: amount, window: 40d }
      - { name: max_40d, agg: max, column: amount, window: 40d }
feature_services:
  daily: [user_spend:sum_30d, user_spend:count_7d, user_spend:max_90d]
  w30: [user_spend:sum_30d, user_spend:max_30d]
  w40: [user_spend:sum_40d, user_spend:max_40d]
"""


def prepare(d):
    if not os.path.exists(os.path.join(d, "roll-today.parquet")):
        prepare_w1(d)
    if not os.path.exists(os.path.join(d, "snapshots.parquet")):
        # every W1 user at every midnight of 2025-12-02..2026-01-01 (sparse: ~1.4 events per
        # user-day), where day tiles would need more tiles than rows
        import numpy as np
        users = np.arange(1, 20_001)
        end = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
        day = 86_400 * 1_000_000
        days = np.arange(end - 30 * day, end + 1, day)
        pq.write_table(pa.table({
            "user_id": pa.array(np.tile(users, len(days))),
            "ts": pa.array(np.repeat(days, len(users)), pa.timestamp("us", tz="UTC")),
        }), os.path.join(d, "snapshots.parquet"))


def prepare_w1(d):
    w1 = "/tmp/w1"
    if not os.path.exists(os.path.join(w1, "events.parquet")):
        subprocess.run([sys.executable, os.path.join(ROOT, "..", "shared", "bench", "gen.py"), w1,
                        "--events", "20000000", "--users", "20000", "--labels", "2000000"], check=True)
    os.makedirs(d, exist_ok=True)
    ev = pq.read_table(os.path.join(w1, "events.parquet")).sort_by([("event_ts", "ascending")])
    pq.write_table(ev, os.path.join(d, "events.parquet"), row_group_size=1_000_000)
    lb = pq.read_table(os.path.join(w1, "labels.parquet"))
    ts = pa.timestamp("us", tz="UTC")
    day = lambda m, d_: pa.scalar(dt.datetime(2025, m, d_, tzinfo=dt.timezone.utc), type=ts)
    d1, d2 = day(12, 1), day(12, 2)
    y = lb.filter(pc.less_equal(lb["ts"], d1))
    new = lb.filter(pc.and_(pc.greater(lb["ts"], d1), pc.less_equal(lb["ts"], d2)))
    pq.write_table(y, os.path.join(d, "yesterday.parquet"))
    pq.write_table(pa.concat_tables([y, new]), os.path.join(d, "today.parquet"))
    pq.write_table(lb.filter(pc.less_equal(lb["ts"], d2)), os.path.join(d, "today-interleaved.parquet"))
    between = lambda a, b: lb.filter(pc.and_(pc.greater(lb["ts"], a), pc.less_equal(lb["ts"], b)))
    pq.write_table(between(day(11, 1), d1).sort_by([("ts", "ascending")]),
                   os.path.join(d, "roll-yesterday.parquet"))
    pq.write_table(between(day(11, 2), d2).sort_by([("ts", "ascending")]),
                   os.path.join(d, "roll-today.parquet"))
    dec = between(day(11, 30), dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    pq.write_table(dec.slice(0, 100_000), os.path.join(d, "december.parquet"))


def prepare_dense(d):
    if os.path.exists(os.path.join(d, "snap-yesterday.parquet")):
        return
    import numpy as np
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(24)
    n, users = 20_000_000, 2_000
    end = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    day = 86_400 * 1_000_000
    ts = np.sort(rng.integers(end - 90 * day, end, n))
    ev = pa.table({
        "user_id": pa.array(rng.integers(0, users, n)),
        "event_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "amount": pa.array(np.round(rng.gamma(2.0, 20.0, n), 2)),
    })
    pq.write_table(ev, os.path.join(d, "events.parquet"), row_group_size=1_000_000)
    dec = end - 31 * day
    m = 100_000
    spine = pa.table({
        "user_id": pa.array(rng.integers(0, users, m)),
        "ts": pa.array(np.sort(rng.integers(dec, end, m)), pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(spine, os.path.join(d, "december.parquet"))
    days = np.arange(dec + day, end + 1, day)
    snap = pa.table({
        "user_id": pa.array(np.tile(np.arange(users), len(days))),
        "ts": pa.array(np.repeat(days, users), pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(snap, os.path.join(d, "snapshots.parquet"))
    # the same snapshots a day earlier: every user at the midnights of 2025-12-01..12-31
    before = pa.table({
        "user_id": pa.array(np.tile(np.arange(users), len(days))),
        "ts": pa.array(np.repeat(days - day, users), pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(before, os.path.join(d, "snap-yesterday.parquet"))


def touch_memory():
    """Write once to all but 2 GB of the machine's available memory, then free it.

    On a freshly booted VM of the `rust` kind, the first write to each page of guest memory
    costs ~2.5 ms per MB (the host backs it then): writing 160 MB of new files took 0.38 s
    before and 0.032 s right after every page had been touched once (and 0.50-0.62 s again
    25 minutes later: freed pages go back to the host). Reuse writes more files than
    `--no-reuse` (the states), so it pays that host cost for them and cold runs do not; this
    separates Quiver's own cost from the VM's for a run of a few minutes.
    """
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    import numpy as np
    chunk, left, held = 1 << 30, max(avail - (2 << 30), 0), []
    t = time.perf_counter()
    while left >= chunk:
        held.append(np.ones(chunk // 8))
        left -= chunk
    print(f"touched {len(held)} GiB of memory in {time.perf_counter() - t:.1f} s", flush=True)
    del held


def join(q, d, spine, out, reuse=True, explain=False, service="daily", force=False):
    cmd = [q, "join", "--repo", d, "--spine", os.path.join(d, spine), "--spine-timestamp", "ts",
           "--service", service, "--out", out]
    if not reuse:
        cmd.append("--no-reuse")
    if force:
        cmd.append("--force-reuse")
    if explain:
        cmd.append("--explain")
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return secs, r.stderr + r.stdout


def same(a, b):
    ta, tb = pq.read_table(a), pq.read_table(b)
    return ta.equals(tb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--quiver", default=os.path.join(ROOT, "target", "release", "quiver"))
    ap.add_argument("--touch-memory", action="store_true",
                    help="write once to the machine's free memory first (see touch_memory)")
    a = ap.parse_args()
    if a.touch_memory:
        touch_memory()
    d = a.dir or ("/tmp/dense" if a.dense else "/tmp/w1t")
    (prepare_dense if a.dense else prepare)(d)
    with open(os.path.join(d, "quiver.yaml"), "w") as f:
        f.write(YAML)
    reuse_dir = os.path.join(d, ".quiver", "offline", "reuse")
    saved = os.path.join(d, "saved-reuse")
    # (name, yesterday's service and spine, today's service and spine)
    scenarios = [
        ("daily refresh (appended)", "daily", "yesterday.parquet", "daily", "today.parquet"),
        ("daily refresh (interleaved)", "daily", "yesterday.parquet", "daily",
         "today-interleaved.parquet"),
        ("rolling 30 days", "daily", "roll-yesterday.parquet", "daily", "roll-today.parquet"),
        ("widening 30d -> 40d, 100k rows", "w30", "december.parquet", "w40", "december.parquet"),
        ("exact repeat", "daily", "yesterday.parquet", "daily", "yesterday.parquet"),
        ("W1 December snapshots (620k rows at midnight), widening 30d -> 40d", "w30",
         "snapshots.parquet", "w40", "snapshots.parquet"),
    ]
    if a.dense:
        scenarios = [
            ("dense: widening 30d -> 40d, 100k rows at random instants", "w30",
             "december.parquet", "w40", "december.parquet"),
            ("dense: widening 30d -> 40d, daily snapshots (62k rows at midnight)", "w30",
             "snapshots.parquet", "w40", "snapshots.parquet"),
            ("dense: daily snapshots rolled by a day (30d)", "w30", "snap-yesterday.parquet",
             "w30", "snapshots.parquet"),
            ("dense: daily snapshots, nothing stored (30d; tiles kept for later)", "w40",
             "december.parquet", "w30", "snapshots.parquet"),
        ]
    print(f"quiver: {a.quiver}; {a.runs} runs each, medians (min-max); outputs checked identical")
    print("| scenario | cold (`--no-reuse`) | reuse, the gate's choice | reuse forced | chosen / cold |")
    print("|---|---|---|---|---|")
    for name, ysvc, yesterday, svc, today in scenarios:
        shutil.rmtree(reuse_dir, ignore_errors=True)
        join(a.quiver, d, yesterday, os.path.join(d, "y.parquet"), service=ysvc)  # stores yesterday's
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(reuse_dir, saved)
        cold_out, warm_out = os.path.join(d, "cold.parquet"), os.path.join(d, "warm.parquet")
        if os.path.exists(cold_out):
            os.remove(cold_out)   # each scenario's first run computes its cold output first
        times = {"cold": [], "auto": [], "forced": []}
        for run in range(a.runs):
            # the order rotates, so that no mode always follows the same one
            order = list(times)[run % 3:] + list(times)[:run % 3]
            if not os.path.exists(cold_out):
                order.remove("cold")
                order.insert(0, "cold")
            for mode in order:
                shutil.rmtree(reuse_dir)
                shutil.copytree(saved, reuse_dir)
                out = cold_out if mode == "cold" else warm_out
                secs, _ = join(a.quiver, d, today, out, reuse=mode != "cold", service=svc,
                               force=mode == "forced")
                if mode != "cold" and not same(cold_out, warm_out):
                    sys.exit(f"{name}: the output with reuse ({mode}) differs from the cold one")
                times[mode].append(secs)
        shutil.rmtree(reuse_dir)
        shutil.copytree(saved, reuse_dir)
        _, explain = join(a.quiver, d, today, warm_out, explain=True, service=svc)
        med = {m: statistics.median(v) for m, v in times.items()}
        cell = lambda m: f"{med[m]:.3f} s ({min(times[m]):.3f}-{max(times[m]):.3f})"
        print(f"| {name} | {cell('cold')} | {cell('auto')} | {cell('forced')} | "
              f"{100 * med['auto'] / med['cold']:.0f} % |")
        for line in explain.splitlines():
            if ("cost gate" in line or "other spine" in line or "bytes scanned" in line
                    or "day tiles" in line):
                print("    " + line.strip())
    shutil.rmtree(saved, ignore_errors=True)


if __name__ == "__main__":
    main()
