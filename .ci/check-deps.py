#!/usr/bin/env python3
"""The dependency rules of ARCHITECTURE.md, checked in CI.

1. Between crates, dependencies point down only:
       core <- offline, online, registry, train <- app <- grpc, http <- cli; offline <- cluster <- app
   core depends on no Quiver crate; offline, online, registry and train on core only (never on
   each other); app composes them and knows no transport; grpc serves app; cli sits on top.
2. Inside a crate, its top-level modules do not import each other in a circle: module A
   using `crate::B` (or `crate::{B, ..}`) is an edge A -> B, and a cycle of such edges fails.
   (Child modules of a folder module count as their parent: `plan/exec.rs` is `plan`.)

Fails naming the offending edge or cycle."""
import glob, json, os, re, subprocess, sys

ALLOWED = {
    "quiver-core": set(),
    "quiver-offline": {"quiver-core"},
    "quiver-online": {"quiver-core"},
    "quiver-registry": {"quiver-core"},
    "quiver-train": {"quiver-core"},
    "quiver-cluster": {"quiver-core", "quiver-offline"},
    "quiver-app": {"quiver-core", "quiver-offline", "quiver-online", "quiver-registry", "quiver-train", "quiver-cluster"},
    "quiver-grpc": {"quiver-core", "quiver-app", "quiver-offline", "quiver-online", "quiver-registry"},
    "quiver-http": {"quiver-core", "quiver-app", "quiver-offline", "quiver-online"},
    "quiver-cli": {"quiver-core", "quiver-offline", "quiver-online", "quiver-registry", "quiver-train", "quiver-cluster", "quiver-app", "quiver-grpc", "quiver-http"},
    "quiver-suite": None,  # integration tests and benchmarks may use anything
}
# Engines, servers and stores that must stay out of core; transports that must stay out of app.
FORBIDDEN = {
    "quiver-core": {"datafusion", "tokio", "tonic", "sled", "redis", "deltalake", "parquet"},
    "quiver-app": {"tonic", "tonic-health", "tonic-reflection", "prost", "arrow-flight", "axum", "hyper"},
}

meta = json.loads(subprocess.check_output(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"]))
bad = []
for pkg in meta["packages"]:
    name = pkg["name"]
    if name not in ALLOWED:
        bad.append(f"{name}: not listed in .ci/check-deps.py (add it with its allowed dependencies)")
        continue
    allowed = ALLOWED[name]
    for dep in pkg["dependencies"]:
        d = dep["name"]
        if dep.get("kind") == "dev":
            continue
        if d.startswith("quiver-") and allowed is not None and d not in allowed:
            bad.append(f"{name} -> {d}: not allowed by the dependency rule")
        if d in FORBIDDEN.get(name, ()):
            bad.append(f"{name} -> {d}: {name} must not depend on it (see ARCHITECTURE.md)")


def top_modules(src):
    """Top-level module name -> its files (a folder module's children included)."""
    mods = {}
    for f in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        parts = os.path.relpath(f, src)[:-3].split(os.sep)
        if parts[0] in ("lib", "main") and len(parts) == 1:
            continue
        mods.setdefault(parts[0], []).append(f)
    return mods


def cycles(src):
    mods = top_modules(src)
    edges = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = re.sub(r"//[^\n]*", "", open(f, encoding="utf-8").read())
            names = re.findall(r"\bcrate::(\w+)", text)
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                names += re.findall(r"\b(\w+)\b", group)
            edges[m].update(n for n in names if n in mods and n != m)
    found, state, stack = [], {}, []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(edges):
        if u not in state:
            visit(u)
    return found


crates = 0
for src in sorted(glob.glob("crates/*/src")):
    crates += 1
    for c in cycles(src):
        bad.append(f"{src}: modules import each other in a circle: {' -> '.join(c)}")

if bad:
    print("dependency rule violated:\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"dependency rule: ok ({len(meta['packages'])} packages; no module cycle in {crates} crates)")
