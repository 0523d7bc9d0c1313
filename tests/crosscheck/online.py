"""Online = offline at lookup time: materialize the data `offline.py SEED` wrote as of T, look
entities up at T and at later times (on and around window edges), and compare with the
offline join at each lookup time. Run `offline.py SEED` first; then

    QUIVER=target/release/quiver python3 tests/crosscheck/online.py SEED
"""
import sys, os, subprocess, json, random, datetime, shutil
import pyarrow as pa, pyarrow.parquet as pq
Q = os.environ.get("QUIVER", "target/release/quiver")
seed = int(sys.argv[1])
d = os.path.join(os.environ.get("XC_DIR", "/tmp/xc"), f"s{seed}")
rng = random.Random(seed * 7)
ev = None
if os.path.exists(d + "/data/ev.csv"):
    import pyarrow.csv as pcsv
    ev = pcsv.read_csv(d + "/data/ev.csv", convert_options=pcsv.ConvertOptions(column_types={"ts": pa.timestamp("us", tz="UTC"), "created": pa.timestamp("us", tz="UTC")}))
else:
    ev = pq.read_table(d + "/data/ev")
yaml = open(d + "/quiver.yaml").read()
multi = "region]" in yaml
tmax = max(t.value for t in ev.column("ts") if t.is_valid) if False else max(x for x in ev.column("ts").cast(pa.int64()).to_pylist() if x is not None)
US = 1_000_000
cmax = max([x for x in ev.column("created").cast(pa.int64()).to_pylist() if x is not None] + [tmax])
T = (cmax if "filter_created" in yaml else tmax) + rng.choice([0, 1, 3600 * US])
iso = lambda t: datetime.datetime.fromtimestamp(t // US, datetime.timezone.utc).replace(microsecond=t % US).isoformat().replace("+00:00", "Z")
shutil.rmtree(d + "/.quiver/online", ignore_errors=True)
r = subprocess.run([Q, "materialize", "--repo", d, "--end", iso(T)], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
if multi:
    keys = sorted(set((a, b) for a, b in zip(ev.column("user_id").to_pylist(), ev.column("region").to_pylist()) if a is not None and b is not None))[:8]
else:
    keys = sorted(set(x for x in ev.column("user_id").to_pylist() if x is not None))[:8]
feats = [l.split("name: ")[1].split(",")[0].strip(" }") for l in yaml.splitlines() if "name: f" in l]
refs = ",".join([f"agg:{f}" for f in feats] + ["lat:lat_amt", "lat:lat_cat"])
bad = 0
for dt in [0, 1, 1800 * US, 3600 * US + 1, 86400 * US, 7 * 86400 * US + 5]:
    T2 = T + dt
    args = [Q, "get", "--repo", d, "--json", "--at", iso(T2), "--features", refs]
    for k in keys: args += ["--entity", f"user_id={k[0]},region={k[1]}" if multi else f"user_id={k}"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    online = json.loads(r.stdout)
    cols = {"user_id": pa.array([k[0] for k in keys] if multi else keys, pa.int64())}
    if multi: cols["region"] = pa.array([k[1] for k in keys], pa.string())
    spine = pa.table({**cols, "event_timestamp": pa.array([T2] * len(keys), pa.timestamp("us", tz="UTC"))})
    pq.write_table(spine, d + "/ospine.parquet")
    r = subprocess.run([Q, "join", "--repo", d, "--spine", d + "/ospine.parquet", "--features", refs, "--out", d + "/oout.parquet", "--no-reuse"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    off = pq.read_table(d + "/oout.parquet")
    for i, k in enumerate(keys):
        for f in feats + ["lat_amt", "lat_cat"]:
            ref = ("agg:" if f.startswith("f") else "lat:") + f
            o = online[i]["features"][ref]
            w = off.column(f)[i].as_py()
            g = o["value"] if o["status"] == "PRESENT" else None
            if o["status"] == "NOT_FOUND" and w == 0:
                g = 0  # counts of an entity never seen
            same = g == w or (isinstance(g, float) and isinstance(w, float) and abs(g - w) <= 1e-9 * max(1, abs(w)))
            if not same:
                bad += 1
                if bad < 10: print(f"seed {seed} dt={dt} key {k} {f}: online {o} offline {w!r}")
print(f"seed {seed}: {bad} online/offline mismatches")
