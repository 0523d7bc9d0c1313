"""Pushes = offline: materialize the data `offline.py SEED` wrote as of T, push three batches of
rows to the online store alone (`quiver push agg FILE --at T`: every view of the source takes
them), look entities up at T and later, then materialize again and look up once more. Each
lookup is compared with the offline join over the source plus the pushed rows (a copy of the
repository with the pushed rows as last files). Run `offline.py SEED` first; then

    QUIVER=target/release/quiver python3 tests/crosscheck/push.py SEED

CSV seeds are skipped (their pushed rows would need the source's text times).
"""
import sys, os, subprocess, json, random, datetime, shutil
import pyarrow as pa, pyarrow.parquet as pq, pyarrow.compute as pc
Q = os.environ.get("QUIVER", "target/release/quiver")
seed = int(sys.argv[1])
root = os.environ.get("XC_DIR", "/tmp/xc")
src = os.path.join(root, f"s{seed}")
if os.path.exists(src + "/data/ev.csv"):
    print(f"seed {seed}: CSV source, skipped")
    sys.exit(0)
on, off = os.path.join(root, f"push{seed}"), os.path.join(root, f"pushoff{seed}")
for d in (on, off):
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d, ignore=shutil.ignore_patterns(".quiver"))
rng = random.Random(seed * 11)
ev = pq.read_table(src + "/data/ev")
yaml = open(on + "/quiver.yaml").read()
multi = "region]" in yaml
US, DAY = 1_000_000, 86_400_000_000
ts = [x for x in ev.column("ts").cast(pa.int64()).to_pylist() if x is not None]
cr = [x for x in ev.column("created").cast(pa.int64()).to_pylist() if x is not None]
T = (max(cr + ts) if "filter_created" in yaml else max(ts)) + rng.choice([0, 1, 3600 * US])
iso = lambda t: datetime.datetime.fromtimestamp(t // US, datetime.timezone.utc).replace(microsecond=t % US).isoformat().replace("+00:00", "Z")


def run(*args):
    r = subprocess.run([Q, *args], capture_output=True, text=True)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


run("materialize", "--repo", on, "--end", iso(T))
# Rows copied from random events (every column and type as the source has them), moved to
# new times around T's windows, a few into the future of T; one key never seen before.
ts_type, cr_type = ev.schema.field("ts").type, ev.schema.field("created").type
pushed = []
for p in range(3):
    rows = ev.take([rng.randrange(ev.num_rows) for _ in range(6)])
    t = [T - rng.choice([0, 1, rng.randrange(40 * DAY)]) + (3600 * US if rng.random() < 0.1 else 0) for _ in range(6)]
    c = [None if rng.random() < 0.2 else x + rng.choice([0, 1, rng.randrange(DAY)]) for x in t]
    rows = rows.set_column(rows.schema.get_field_index("ts"), "ts", pa.array(t, pa.int64()).cast(ts_type))
    rows = rows.set_column(rows.schema.get_field_index("created"), "created", pa.array(c, pa.int64()).cast(cr_type))
    if p == 2:
        uid = rows.column("user_id").to_pylist()
        uid[0] = 10_000_000 + seed
        rows = rows.set_column(rows.schema.get_field_index("user_id"), "user_id", pa.array(uid, rows.schema.field("user_id").type))
    f = f"{on}/push{p}.parquet"
    pq.write_table(rows, f)
    run("push", "agg", f, "--repo", on, "--at", iso(T))
    # the offline copy: the pushed rows after the source's own files, in push order
    pq.write_table(rows, f"{off}/data/ev/part-9-{p}.parquet")
    pushed.append(rows)
allp = pa.concat_tables(pushed)
if multi:
    keys = sorted(set((a, b) for a, b in zip(allp.column("user_id").to_pylist(), allp.column("region").to_pylist()) if a is not None and b is not None))
else:
    keys = sorted(set(x for x in allp.column("user_id").to_pylist() if x is not None))
feats = [l.split("name: ")[1].split(",")[0].strip(" }") for l in yaml.splitlines() if "name: f" in l]
refs = ",".join([f"agg:{f}" for f in feats] + ["lat:lat_amt", "lat:lat_cat"])
bad = 0


def compare(label):
    global bad
    for dt in [0, 1, 3600 * US + 1, 86400 * US, 7 * 86400 * US + 5]:
        T2 = T + dt
        args = ["get", "--repo", on, "--json", "--at", iso(T2), "--features", refs]
        for k in keys:
            args += ["--entity", f"user_id={k[0]},region={k[1]}" if multi else f"user_id={k}"]
        online = json.loads(run(*args))
        cols = {"user_id": pa.array([k[0] for k in keys] if multi else keys, pa.int64())}
        if multi:
            cols["region"] = pa.array([k[1] for k in keys], pa.string())
        spine = pa.table({**cols, "event_timestamp": pa.array([T2] * len(keys), pa.timestamp("us", tz="UTC"))})
        pq.write_table(spine, off + "/ospine.parquet")
        run("join", "--repo", off, "--spine", off + "/ospine.parquet", "--features", refs, "--out", off + "/oout.parquet", "--no-reuse")
        res = pq.read_table(off + "/oout.parquet")
        for i, k in enumerate(keys):
            for f in feats + ["lat_amt", "lat_cat"]:
                ref = ("agg:" if f.startswith("f") else "lat:") + f
                o = online[i]["features"][ref]
                w = res.column(f)[i].as_py()
                g = o["value"] if o["status"] == "PRESENT" else None
                if o["status"] == "NOT_FOUND" and w == 0:
                    g = 0
                same = g == w or (isinstance(g, float) and isinstance(w, float) and abs(g - w) <= 1e-9 * max(1, abs(w)))
                if not same:
                    bad += 1
                    if bad < 10:
                        print(f"seed {seed} {label} dt={dt} key {k} {f}: online {o} offline {w!r}")


# Rows pushed with an event time after T (or, with filter_created, created after it) are not
# known at T: drop them from the offline copy for the comparison (the online store keeps them
# for a later materialization).
for p in range(3):
    f = f"{off}/data/ev/part-9-{p}.parquet"
    t = pq.read_table(f)
    known = pc.less_equal(t.column("ts").cast(pa.int64()), T)
    if "filter_created" in yaml:  # a row created after T is not known at T either
        c = t.column("created").cast(pa.int64())
        known = pc.and_kleene(known, pc.or_kleene(pc.is_null(c), pc.less_equal(c, T)))
    pq.write_table(t.filter(known), f)
compare("after pushes")
run("materialize", "--repo", on, "--end", iso(T))
compare("after materialize")
print(f"seed {seed}: {len(keys)} keys, {bad} push/offline mismatches")
