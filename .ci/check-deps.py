#!/usr/bin/env python3
"""The dependency rule of ARCHITECTURE.md: dependencies between Quiver's crates point down only.

core depends on no Quiver crate; offline, online and registry depend on core only (never on
each other); server composes them; cli sits on top. Fails naming the offending edge."""
import json, subprocess, sys

ALLOWED = {
    "quiver-core": set(),
    "quiver-offline": {"quiver-core"},
    "quiver-online": {"quiver-core"},
    "quiver-registry": {"quiver-core"},
    "quiver-train": {"quiver-core"},
    "quiver-proto": set(),
    "quiver-server": {"quiver-core", "quiver-offline", "quiver-online", "quiver-registry", "quiver-train", "quiver-proto"},
    "quiver-cli": {"quiver-core", "quiver-offline", "quiver-online", "quiver-registry", "quiver-train", "quiver-proto", "quiver-server"},
    "quiver-suite": None,  # integration tests and benchmarks may use anything
}
# Engines, servers and stores that must stay out of core.
CORE_FORBIDDEN = {"datafusion", "tokio", "tonic", "sled", "deltalake", "parquet"}

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
        if d.startswith("quiver-") and allowed is not None and d not in allowed:
            bad.append(f"{name} -> {d}: not allowed by the dependency rule")
        if name == "quiver-core" and d in CORE_FORBIDDEN:
            bad.append(f"quiver-core -> {d}: core must not depend on an engine, server or store")
if bad:
    print("dependency rule violated:\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"dependency rule: ok ({len(meta['packages'])} crates)")
