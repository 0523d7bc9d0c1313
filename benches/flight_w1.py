#!/usr/bin/env python3
"""W1's training set fetched over Arrow Flight into a pyarrow Table, against `quiver join`
writing Parquet, whole process, same machine, same session.

    python benches/flight_w1.py /tmp/w1 [RUNS]

Run it with the python of `tests/python/python-env` (which has the `quiver` client
installed) after `cargo build --release -p quiver-cli`. Each Flight run is a fresh client
process that reads the spine from Parquet, uploads it, and reads the training set into a
Table; it reports its time and its peak memory (resident set growth over the imports, and
pyarrow's pool peak) beside the table's Arrow size. The server is a release
`quiver serve` of the same repository; both sides compute cold (the server keeps no reuse
states, the join runs with --no-reuse).
"""

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIVER = os.environ.get("QUIVER_BIN", str(ROOT / "target" / "release" / "quiver"))

CLIENT = r"""
import json, resource, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from quiver import Client
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
base = rss()
t0 = time.perf_counter()
spine = pq.read_table(sys.argv[2])
# the spine is the caller's input: what the fetch itself holds is measured from here
loaded = rss()
with Client(sys.argv[1], timeout=None) as c:
    table = c.get_historical_features(spine, service="w1")
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "rows": table.num_rows, "columns": table.num_columns,
                  "table_bytes": table.nbytes, "spine_bytes": spine.nbytes,
                  "rss_growth": peak - base, "fetch_growth": peak - loaded,
                  "pool_peak": pa.default_memory_pool().max_memory()}))
"""


def serve(repo: Path):
    proc = subprocess.Popen([QUIVER, "serve", "--addr", "127.0.0.1:0", "--repo", str(repo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found, addr = threading.Event(), []

    def read():
        for line in proc.stderr:
            m = re.search(r" on (\S+:\d+)\s*$", line)
            if m and not addr:
                addr.append(m.group(1))
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(60):
        proc.kill()
        sys.exit("quiver serve did not start")
    return proc, addr[0]


def main():
    repo = Path(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    spine = repo / "labels.parquet"
    out = Path("/tmp/flight_w1_join.parquet")
    proc, addr = serve(repo)
    joins, flights = [], []
    try:
        # alternated, so both sides see the same load on the machine
        for _ in range(runs):
            out.unlink(missing_ok=True)
            t0 = time.perf_counter()
            subprocess.run([QUIVER, "join", "--repo", str(repo), "--spine", str(spine), "--service", "w1",
                            "--out", str(out), "--no-reuse"], check=True, capture_output=True)
            joins.append(time.perf_counter() - t0)
            p = subprocess.run([sys.executable, "-c", CLIENT, addr, str(spine)], check=True,
                               capture_output=True, text=True)
            flights.append(json.loads(p.stdout))
    finally:
        proc.terminate()
        proc.wait(10)
    j = statistics.median(joins)
    f = statistics.median(r["seconds"] for r in flights)
    last = flights[-1]
    print(f"quiver join -> Parquet (whole process, --no-reuse): median {j:.2f} s of {[round(x, 2) for x in joins]}")
    print(f"Flight -> pyarrow.Table (client process, spine read + upload + build + stream): "
          f"median {f:.2f} s of {[round(r['seconds'], 2) for r in flights]}  ratio {f / j:.2f}x")
    mib = 1 << 20
    print(f"table {last['rows']} rows x {last['columns']} columns, Arrow size {last['table_bytes'] / mib:.0f} MiB "
          f"(spine {last['spine_bytes'] / mib:.0f} MiB)")
    for r in flights:
        print(f"  client peak during the fetch (spine in memory): {r['fetch_growth'] / mib:.0f} MiB "
              f"({r['fetch_growth'] / r['table_bytes']:.2f}x the table); whole process incl. reading the spine "
              f"from Parquet {r['rss_growth'] / mib:.0f} MiB ({r['rss_growth'] / r['table_bytes']:.2f}x); "
              f"pyarrow pool peak {r['pool_peak'] / mib:.0f} MiB")

if __name__ == "__main__":
    main()
