"""Fixtures: a generated feature repository, the `quiver` binary and a `quiver serve` of it on
a free loopback port, started and stopped by pid.

The binary is `$QUIVER_BIN`, else the repository's `target/debug/quiver` (build it with
`cargo build -p quiver-cli`)."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import subprocess
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
USERS = 300
DAY = dt.timedelta(days=1)
START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)

QUIVER_YAML = """\
project: shop
entities:
  user:
    join_keys: [user_id]
sources:
  purchases:
    path: data/purchases.parquet
    timestamp: ts
feature_views:
  spend:
    entity: user
    source: purchases
    features:
      - { name: amount_7d, agg: sum, column: amount, window: 7d }
      - { name: orders_30d, agg: count, column: "*", window: 30d }
      - { name: mean_30d, agg: mean, column: amount, window: 30d }
      - { name: max_90d, agg: max, column: amount, window: 90d }
      - { name: last_channel, agg: last, column: channel }
feature_services:
  churn:
    - spend:amount_7d
    - spend:orders_30d
    - spend:mean_30d
    - spend:max_90d
    - spend:last_channel
"""


def quiver_bin() -> str:
    b = os.environ.get("QUIVER_BIN") or str(ROOT / "target" / "debug" / "quiver")
    if not Path(b).is_file():
        pytest.fail(f"no quiver binary at {b}: run `cargo build -p quiver-cli` or set QUIVER_BIN")
    return b


def run(repo: Path, *args: str) -> str:
    """`quiver ARGS --repo REPO`; its stdout, failing the test with its stderr."""
    p = subprocess.run([quiver_bin(), *args, "--repo", str(repo)], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.fail(f"quiver {' '.join(args)} failed: {p.stderr}")
    return p.stdout


def make_repo(d: Path, seed: int = 7) -> None:
    """A shop's purchases (8 000 events, 300 users, 120 days) and 1 500 churn labels."""
    rnd = random.Random(seed)
    (d / "data").mkdir(parents=True)
    (d / "quiver.yaml").write_text(QUIVER_YAML)
    rows = []
    for _ in range(8000):
        t = START + dt.timedelta(seconds=rnd.randrange(0, 120 * 86400))
        rows.append((rnd.randrange(1, USERS + 1), t, round(rnd.uniform(1, 200), 2), rnd.choice(["web", "app", "store"])))
    rows.sort(key=lambda r: r[1])
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([r[0] for r in rows], pa.int64()),
                "ts": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
                "amount": pa.array([r[2] for r in rows], pa.float64()),
                "channel": pa.array([r[3] for r in rows], pa.string()),
            }
        ),
        d / "data" / "purchases.parquet",
    )
    labels = []
    for i in range(1500):
        t = START + dt.timedelta(days=30) + dt.timedelta(seconds=rnd.randrange(0, 100 * 86400))
        labels.append((rnd.randrange(1, USERS + 20), t, rnd.randrange(0, 2)))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([r[0] for r in labels], pa.int64()),
                "event_timestamp": pa.array([r[1] for r in labels], pa.timestamp("us", tz="UTC")),
                "churned": pa.array([r[2] for r in labels], pa.int64()),
            }
        ),
        d / "labels.parquet",
    )


class Server:
    """`quiver serve` of a repository on 127.0.0.1:0; `address` is where it listens."""

    def __init__(self, repo: Path, *extra: str):
        self.proc = subprocess.Popen(
            [quiver_bin(), "serve", "--addr", "127.0.0.1:0", "--repo", str(repo), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = threading.Event()
        self.address = None
        self.log = []

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r" on (\S+:\d+)\s*$", line)
                if m and self.address is None:
                    self.address = m.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            self.stop()
            pytest.fail(f"quiver serve did not say where it listens: {''.join(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    d = tmp_path / "repo"
    make_repo(d)
    return d


@pytest.fixture
def server(repo: Path):
    # the online store holds values as of the end of the data
    run(repo, "materialize", "--end", "2025-05-01T00:00:00Z")
    s = Server(repo)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    from quiver import Client

    with Client(server.address) as c:
        yield c


@pytest.fixture
def labels(repo: Path) -> pa.Table:
    return pq.read_table(repo / "labels.parquet")
