"""Independent cross-check of `quiver join` against DuckDB SQL written from DESIGN §3.

Random events (ties, window edges, nulls, two files), random spines (narrower key type,
duplicates, null keys and times; ms/ns/zoned/date spine times), 30 random window features
(every aggregate, closure, offset, filter) and two latest-value features; sometimes two key
columns, a CSV source with RFC 3339 times in several zones, or `filter_created`. Prints the
mismatches and exits 1 when there is one. Not part of `cargo test` (it needs Python with
duckdb and pyarrow); run by hand after engine changes:

    for s in $(seq 1 200); do QUIVER=target/release/quiver python3 tests/crosscheck/offline.py $s | tail -1; done

With `XC_REUSE=1` the join runs twice with the reuse catalog on (the second from stored states).
"""
import sys, os, subprocess, random, math, shutil
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, duckdb

Q = os.environ.get("QUIVER", "target/release/quiver")
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
rng = random.Random(seed)
d = os.path.join(os.environ.get("XC_DIR", "/tmp/xc"), f"s{seed}")
shutil.rmtree(d, ignore_errors=True); os.makedirs(d + "/data")
US = 1_000_000
H = 3600 * US
base = 1_700_000_000 * US
nkeys = rng.choice([3, 10, 40])
multi = rng.random() < 0.3       # two key columns: user_id and a string region
csv = rng.random() < 0.3         # events in CSV, times as RFC 3339 strings with offsets
fcreated = rng.random() < 0.25   # filter_created: true
sp_kind = rng.choice(["ms_utc", "ns_naive", "us_berlin", "date"])
n = rng.choice([50, 300, 2000])
# event times on a coarse grid so ties and window edges happen
grid = rng.choice([H, 30 * 60 * US, 86400 * US])
span = rng.choice([10, 60, 400])
ev_t = [base + rng.randrange(span) * grid + rng.choice([0, 0, 0, 1, -1]) for _ in range(n)]
ev_c = [t + rng.choice([0, 0, H, 2 * H]) if rng.random() < 0.9 else None for t in ev_t]
ev_k = [rng.randrange(nkeys) if rng.random() > 0.03 else None for _ in range(n)]
amt = [round(rng.uniform(-50, 200), 2) if rng.random() > 0.15 else None for _ in range(n)]
qty = [rng.randrange(-5, 20) if rng.random() > 0.15 else None for _ in range(n)]
cat = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
reg = [rng.choice(["eu", "us"]) if rng.random() > 0.02 else None for _ in range(n)]
if sp_kind == "date":
    grid = 86400 * US
    ev_t = [base - base % grid + rng.randrange(span) * grid + rng.choice([0, 0, 0, 1, -1]) for _ in range(n)]
# two files: the tie order is file then row
cut = n // 2
import datetime
def rfc(t):
    if t is None: return None
    off = rng.choice([0, 2, -5])
    tz = datetime.timezone(datetime.timedelta(hours=off))
    dt = datetime.datetime.fromtimestamp(t // US, tz).replace(microsecond=t % US)
    return dt.isoformat().replace("+00:00", "Z")
def ev_table(sl):
    if csv:
        return pa.table({
            "user_id": pa.array(ev_k[sl], pa.int64()),
            "region": pa.array(reg[sl], pa.string()),
            "ts": pa.array([rfc(t) for t in ev_t[sl]], pa.string()),
            "created": pa.array([rfc(t) for t in ev_c[sl]], pa.string()),
            "amount": pa.array(amt[sl], pa.float64()),
            "qty": pa.array(qty[sl], pa.int64()),
            "cat": pa.array(cat[sl], pa.string()),
        })
    return pa.table({
        "region": pa.array(reg[sl], pa.string()),
        "user_id": pa.array(ev_k[sl], pa.int64()),
        "ts": pa.array(ev_t[sl], pa.timestamp("us", tz="UTC")),
        "created": pa.array(ev_c[sl], pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amt[sl], pa.float64()),
        "qty": pa.array(qty[sl], pa.int64()),
        "cat": pa.array(cat[sl], pa.string()),
    })
import pyarrow.csv as pcsv
if csv:
    # one CSV file (a folder of CSVs is not a source form)
    pcsv.write_csv(ev_table(slice(0, n)), d + "/data/ev.csv")
else:
    os.makedirs(d + "/data/ev")
    pq.write_table(ev_table(slice(0, cut)), d + "/data/ev/part-0.parquet")
    pq.write_table(ev_table(slice(cut, n)), d + "/data/ev/part-1.parquet")

m = rng.choice([20, 100, 500])
sp_t = [base + rng.randrange(span + 5) * grid + rng.choice([0, 0, 1, -1, 7]) for _ in range(m)]
sp_t = [t if rng.random() > 0.03 else None for t in sp_t]
if sp_kind == "date":
    sp_t = [None if t is None else t - t % (86400 * US) for t in sp_t]
elif sp_kind != "ns_naive":
    sp_t = [None if t is None else t - t % 1000 for t in sp_t]
sp_k = [rng.randrange(nkeys + 2) if rng.random() > 0.03 else None for _ in range(m)]
# duplicates
sp_r = [rng.choice(["eu", "us", "xx"]) for _ in range(m)]
for i in range(m // 10):
    j = rng.randrange(m); sp_t.append(sp_t[j]); sp_k.append(sp_k[j]); sp_r.append(sp_r[j])
if sp_kind == "ms_utc":
    st = pa.array([None if t is None else t // 1000 for t in sp_t], pa.timestamp("ms", tz="UTC"))
elif sp_kind == "ns_naive":
    st = pa.array([None if t is None else t * 1000 for t in sp_t], pa.timestamp("ns"))
elif sp_kind == "us_berlin":
    st = pa.array(sp_t, pa.timestamp("us", tz="Europe/Berlin"))
else:
    st = pa.array([None if t is None else t // (86400 * US) for t in sp_t], pa.date32())
spine = pa.table({
    "user_id": pa.array(sp_k, pa.int32()),   # a narrower integer than the source's key
    "region": pa.array(sp_r, pa.string()),
    "event_timestamp": st,
    "label": pa.array(list(range(len(sp_k))), pa.int64()),
})
pq.write_table(spine, d + "/spine.parquet")

durs = {"1h": H, "1d": 24 * H, "7d": 7 * 24 * H, "90m": 90 * 60 * US}
feats = []
aggs = ["sum", "count", "mean", "min", "max", "first", "last", "stddev", "var", "count_distinct"]
cols = ["amount", "qty", "cat"]
fid = 0
for _ in range(30):
    agg = rng.choice(aggs)
    col = rng.choice(cols)
    if agg in ("sum", "mean", "stddev", "var") and col == "cat":
        col = "amount"
    if agg == "count" and rng.random() < 0.3:
        col = "*"
    w = rng.choice(list(durs) + [None])
    f = {"name": f"f{fid}", "agg": agg, "column": col}
    if w: f["window"] = w
    if rng.random() < 0.3: f["offset"] = rng.choice(["1h", "30m", "1d"])
    if rng.random() < 0.5: f["closed"] = rng.choice(["right", "left", "both", "neither"])
    if rng.random() < 0.2: f["filter"] = "cat = 'a'" if rng.random() < 0.5 else "qty > 3"
    feats.append(f); fid += 1
ttl = rng.choice([None, "1d", "7d"])
latest = [{"name": "lat_amt", "column": "amount"}, {"name": "lat_cat", "column": "cat"}]

def yflow(f):
    return "{ " + ", ".join(f"{k}: {v!r}" if k == "filter" or v == "*" else f"{k}: {v}" for k, v in f.items()) + " }"
y = ["project: x", "entities:", "  user:", "    join_keys: [user_id, region]" if multi else "    join_keys: [user_id]", "sources:", "  ev:",
     "    path: data/ev.csv" if csv else "    path: data/ev/", "    timestamp: ts", "    created_timestamp: created"] + (["    filter_created: true"] if fcreated else []) + [
     "feature_views:", "  agg:", "    entity: user", "    source: ev", "    features:"]
y += ["      - " + yflow(f).replace("'*'", '"*"').replace("filter: \"", "filter: \"") for f in feats]
y += ["  lat:", "    entity: user", "    source: ev"] + ([f"    ttl: {ttl}"] if ttl else []) + ["    features:"]
y += ["      - " + yflow(f) for f in latest]
open(d + "/quiver.yaml", "w").write("\n".join(y) + "\n")
refs = ",".join([f"agg:{f['name']}" for f in feats] + ["lat:lat_amt", "lat:lat_cat"])
# XC_REUSE=1: with the reuse catalog on, joined twice (states computed, then every feature
# but count_distinct an exact match); both outputs must agree, and the second is checked.
reuse = os.environ.get("XC_REUSE") == "1"
outs = []
for _ in range(2 if reuse else 1):
    r = subprocess.run([Q, "join", "--repo", d, "--spine", d + "/spine.parquet", "--features", refs,
                        "--out", d + "/out.parquet"] + ([] if reuse else ["--no-reuse"]),
                       capture_output=True, text=True)
    if r.returncode != 0:
        print("QUIVER FAILED", seed, r.stderr); sys.exit(1)
    outs.append(pq.read_table(d + "/out.parquet"))
if reuse and not outs[0].equals(outs[1]):
    print("REUSED OUTPUT DIFFERS", seed); sys.exit(1)
out = outs[-1]

con = duckdb.connect()
con.execute("SET TimeZone='UTC'")
ev = pa.table({"user_id": pa.array(ev_k, pa.int64()), "region": pa.array(reg, pa.string()), "ts": pa.array(ev_t, pa.int64()),
               "created": pa.array(ev_c, pa.int64()), "amount": pa.array(amt, pa.float64()),
               "qty": pa.array(qty, pa.int64()), "cat": pa.array(cat, pa.string()),
               "seq": pa.array(list(range(n)), pa.int64())})
sp = pa.table({"rid": list(range(len(sp_k))), "user_id": pa.array(sp_k, pa.int64()),
               "region": pa.array(sp_r, pa.string()), "t": pa.array(sp_t, pa.int64())})
KEY = "e.user_id = s.user_id" + (" AND e.region = s.region" if multi else "")
VIS = " AND (e.created IS NULL OR e.created <= s.t)" if fcreated else ""
con.register("ev", ev); con.register("sp", sp)
# created null ranks lowest (as no created time)
order = "(e.ts, coalesce(e.created, -9223372036854775807), e.seq)"
bad = 0
def cmp(name, got, want, isfloat):
    global bad
    for i, (g, w) in enumerate(zip(got, want)):
        same = (g is None and w is None) or (g is not None and w is not None and (
            (abs(g - w) <= 1e-9 * max(1, abs(w))) if isfloat else g == w))
        if not same:
            bad += 1
            if bad < 15:
                print(f"seed {seed} {name} row {i}: quiver {g!r} reference {w!r}")
for f in feats:
    W = durs.get(f.get("window"))
    D = durs.get(f.get("offset"), 0) if f.get("offset") else 0
    D = {"1h": H, "30m": 30 * 60 * US, "1d": 24 * H}.get(f.get("offset"), 0)
    cl = f.get("closed", "right")
    e = f"(s.t - {D})"
    conds = []
    if cl in ("right", "both"): conds.append(f"e.ts <= {e}")
    else: conds.append(f"e.ts < {e}")
    if W is not None:
        st = f"({e} - {W})"
        if cl in ("left", "both"): conds.append(f"e.ts >= {st}")
        else: conds.append(f"e.ts > {st}")
    if f.get("filter"):
        conds.append("(" + f["filter"].replace("cat", "e.cat").replace("qty", "e.qty") + ") IS TRUE")
    col = f["column"]; agg = f["agg"]
    v = "e.seq" if col == "*" else f"e.{col}"
    expr = {
        "sum": f"sum({v})", "count": f"count({v})", "mean": f"avg({v})", "min": f"min({v})",
        "max": f"max({v})", "first": f"arg_min({v}, {order}) FILTER (WHERE {v} IS NOT NULL)",
        "last": f"arg_max({v}, {order}) FILTER (WHERE {v} IS NOT NULL)",
        "stddev": f"stddev_samp({v})", "var": f"var_samp({v})", "count_distinct": f"count(DISTINCT {v})",
    }[agg]
    q = f"""SELECT s.rid, {expr} AS v FROM sp s LEFT JOIN ev e ON {KEY}{VIS} AND s.t IS NOT NULL AND {' AND '.join(conds)}
            GROUP BY s.rid ORDER BY s.rid"""
    want = [row[1] for row in con.execute(q).fetchall()]
    if agg in ("count", "count_distinct"):
        want = [0 if x is None else x for x in want]
    got = out.column(f["name"]).to_pylist()
    cmp(f"{f['name']} {f}", got, want, agg in ("sum", "mean", "stddev", "var") and col == "amount" or agg in ("mean", "stddev", "var"))
T = durs.get(ttl) if ttl else None
for f in latest:
    c = f["column"]
    cond = "e.ts <= s.t" + (f" AND e.ts >= s.t - {T}" if T is not None else "")
    q = f"""SELECT s.rid, arg_max_null(e.{c}, {order}) FILTER (WHERE e.ts IS NOT NULL) FROM sp s LEFT JOIN ev e ON {KEY}{VIS} AND s.t IS NOT NULL AND {cond}
            GROUP BY s.rid ORDER BY s.rid"""
    want = [row[1] for row in con.execute(q).fetchall()]
    cmp(f["name"], out.column(f["name"]).to_pylist(), want, c == "amount")
# spine carried unchanged, in order
assert out.column("label").to_pylist() == list(range(len(sp_k))), "spine order"
print(f"seed {seed} multi={multi} csv={csv} fcreated={fcreated} spine={sp_kind}: {len(sp_k)} rows x {len(feats)+2} features, {bad} mismatches")
if os.environ.get("DBG"):
    r = int(os.environ["DBG"])
    print("spine", sp.slice(r, 1).to_pylist())
    k = sp.column("user_id")[r].as_py(); t = sp.column("t")[r].as_py()
    print(con.execute(f"SELECT user_id, ts - {t} AS dt, created - {t} AS dc, amount, qty, cat FROM ev WHERE user_id = {k} AND ts <= {t} AND ts > {t} - {24*H} ORDER BY ts").fetchall())
sys.exit(1 if bad else 0)
