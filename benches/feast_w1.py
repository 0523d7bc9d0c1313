#!/usr/bin/env python3
"""Feast's get_historical_features(...).to_arrow() on W1's data, for the one kind of feature
Feast computes itself: the latest value (W1's `last_amount`), with its DuckDB offline store,
against Quiver's Flight fetch of the same feature (and of all of W1) on the same machine.

    python benches/feast_w1.py /tmp/w1 QUIVER_ADDR [RUNS [ROWS]]   # python of a venv with feast[duckdb]

ROWS takes the first ROWS labels as the spine (default all 2 M; Feast needs ~57 s per 100 k
on the 2-core machine).

QUIVER_ADDR is a running `quiver serve --repo /tmp/w1`; the Quiver side runs in a child with
the tests' python (`tests/python/python-env`, which has the client) given as $QUIVER_PYTHON.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

w1, addr = Path(sys.argv[1]), sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
cut = f".slice(0, {limit})" if limit else ""
repo = Path(tempfile.mkdtemp(prefix="feast_w1_"))
(repo / "feature_store.yaml").write_text(textwrap.dedent(f"""\
    project: w1
    registry: {repo}/registry.db
    provider: local
    offline_store: {{ type: duckdb }}
    online_store: {{ type: sqlite, path: {repo}/online.db }}
    entity_key_serialization_version: 3
    """))
(repo / "defs.py").write_text(textwrap.dedent(f"""\
    from datetime import timedelta
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64
    user = Entity(name="user", join_keys=["user_id"])
    events = FileSource(path="{w1}/events.parquet", timestamp_field="event_ts")
    user_spend = FeatureView(name="user_spend", entities=[user], ttl=timedelta(days=36500),
                             schema=[Field(name="amount", dtype=Float64)], source=events)
    """))
subprocess.run(["feast", "apply"], cwd=repo, check=True, capture_output=True,
               env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})

FEAST = f"""
import resource, sys, time
import pyarrow.parquet as pq
from feast import FeatureStore
t0 = time.perf_counter()
labels = pq.read_table("{w1}/labels.parquet").select(["user_id", "ts"]){cut}.rename_columns(["user_id", "event_timestamp"]).to_pandas()
store = FeatureStore(repo_path="{repo}")
table = store.get_historical_features(entity_df=labels, features=["user_spend:amount"]).to_arrow()
print(time.perf_counter() - t0, table.num_rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
QUIVER = f"""
import resource, sys, time
import pyarrow.parquet as pq
from quiver import Client
t0 = time.perf_counter()
labels = pq.read_table("{w1}/labels.parquet").select(["user_id", "ts"]){cut}
with Client("{addr}", timeout=None) as c:
    table = c.get_historical_features(labels, sys.argv[1].split(","))
print(time.perf_counter() - t0, table.num_rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
qpy = os.environ["QUIVER_PYTHON"]
everything = ",".join(f"user_spend:{a}_{w}" for w in ["1d", "7d", "30d", "90d"] for a in ["sum", "count", "mean", "min", "max"]) + ",user_spend:last_amount"
rows = {"feast (duckdb), latest amount": [], "quiver flight, last_amount": [], "quiver flight, all 21 W1 features": []}
for _ in range(runs):
    for name, cmd in [("feast (duckdb), latest amount", [sys.executable, "-c", FEAST]),
                      ("quiver flight, last_amount", [qpy, "-c", QUIVER, "user_spend:last_amount"]),
                      ("quiver flight, all 21 W1 features", [qpy, "-c", QUIVER, everything])]:
        p = subprocess.run(cmd, check=True, capture_output=True, text=True)
        s, n, rss = p.stdout.strip().splitlines()[-1].split()
        rows[name].append((float(s), int(n), int(rss) >> 10))
for name, r in rows.items():
    print(f"{name}: median {statistics.median(x[0] for x in r):.2f} s of {[round(x[0], 2) for x in r]}, "
          f"{r[0][1]} rows, peak RSS {max(x[2] for x in r)} MiB")
