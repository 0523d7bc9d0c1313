"""The Python client against a real `quiver serve`: training sets over Arrow Flight equal
`quiver join`'s output column by column, a scikit-learn model registered from Python shows
its lineage in `quiver models show`, online lookups equal `quiver get`, and errors arrive as
exceptions carrying the server's message."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import quiver
from conftest import run

FEATURES = ["amount_7d", "orders_30d", "mean_30d", "max_90d", "last_channel"]


def joined(repo: Path, *extra: str) -> pa.Table:
    """`quiver join` of the labels with the churn service, read back."""
    out = repo / f"join-{len(list(repo.glob('join-*')))}.parquet"
    run(repo, "join", "--spine", str(repo / "labels.parquet"), "--service", "churn", "--out", str(out), *extra)
    return pq.read_table(out)


def assert_same(got: pa.Table, want: pa.Table, spine_cast: bool = False) -> None:
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        g, w = got.column(name), want.column(name)
        if spine_cast and name not in FEATURES and g.type != w.type:
            g = g.cast(w.type)
        assert g.type == w.type, f"{name}: {g.type} != {w.type}"
        assert g.equals(w), f"column {name} differs"


def test_training_set_over_flight_equals_quiver_join(client, repo, labels):
    want = joined(repo, "--no-reuse")
    got = client.get_historical_features(labels, service="churn")
    assert_same(got, want)
    assert client.last_build["rows"] == labels.num_rows
    # the values are real: most labels have a purchase in the 30 days before them
    assert pc.sum(pc.is_valid(got.column("orders_30d"))).as_py() == labels.num_rows
    assert pc.sum(pc.greater(got.column("orders_30d"), 0)).as_py() > labels.num_rows // 2
    # features by name, in the order asked, full names
    got = client.get_historical_features(labels, ["spend:max_90d", "spend:amount_7d"], full_feature_names=True)
    assert got.column_names[-2:] == ["spend__max_90d", "spend__amount_7d"]
    assert got.column("spend__max_90d").equals(want.column("max_90d"))


def test_spines_from_pandas_and_polars(client, repo, labels):
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    want = joined(repo)
    from_pandas = client.get_historical_features(labels.to_pandas(), service="churn")
    assert_same(from_pandas, want, spine_cast=True)
    from_polars = client.get_historical_features(pl.from_arrow(labels), service="churn")
    assert_same(from_polars, want, spine_cast=True)
    assert isinstance(labels.to_pandas(), pd.DataFrame)


def test_registered_training_set_and_sklearn_model_lineage(client, repo, labels, tmp_path):
    from sklearn.linear_model import LogisticRegression

    train = client.get_historical_features(labels, service="churn", register="train")
    registered = client.last_build["registered"]
    assert registered.startswith("train@1"), client.last_build
    # the recorded version is the table streamed
    assert_same(client.dataset("train@1"), train)
    listed = {d["ref"]: d for d in client.datasets()}
    assert listed["train@1"]["kind"] == "training"
    assert listed["train_spine@1"]["operation"] == "upload"
    assert listed["train@1"]["columns"] == train.column_names

    # a model trained on it, from Python
    numeric = ["amount_7d", "orders_30d", "mean_30d", "max_90d"]
    x = [[v or 0.0 for v in row] for row in zip(*(train.column(c).to_pylist() for c in numeric))]
    y = train.column("churned").to_pylist()
    model = LogisticRegression(max_iter=500).fit(x, y)
    accuracy = float(model.score(x, y))
    artifact = tmp_path / "churn.pkl"
    artifact.write_bytes(pickle.dumps(model))
    m = client.register_model(
        "churn",
        artifact,
        dataset="train@1",
        metrics={"accuracy": accuracy},
        eval_dataset="train@1",
        params={"max_iter": 500, "algo": "logistic"},
        costs={"latency_ms": 0.2},
    )
    assert m["ref"] == "churn@1"
    assert m["dataset"] == "train@1"
    assert m["params"]["max_iter"] == "500"
    assert m["costs"]["size_bytes"] == artifact.stat().st_size
    assert sorted(m["features"]) == sorted(f"spend@1:{f}" for f in FEATURES)
    assert [x["ref"] for x in client.models()] == ["churn@1"]
    assert client.model("churn")["artifact_hash"] == m["artifact_hash"]
    edges = client.lineage("model:churn@1", downstream=False)
    pairs = {(e["from"], e["to"], e["operation"]) for e in edges}
    assert ("dataset train@1", "model churn@1", "train") in pairs, edges
    assert ("dataset train_spine@1", "dataset train@1", "join") in pairs, edges
    assert ("dataset purchases@1", "dataset train@1", "join") in pairs, edges
    assert ("feature view spend@1", "dataset train@1", "join") in pairs, edges
    best = client.select_best("accuracy", on="train@1")
    assert best["found"] and best["model"]["ref"] == "churn@1"
    assert best["metric"] == pytest.approx(accuracy)

    # the command line sees what Python registered, with its lineage
    shown = json.loads(run(repo, "models", "show", "churn@1", "--json"))
    assert shown["dataset"]["name"] == "train" and shown["dataset"]["version"] == 1, shown
    lineage = run(repo, "lineage", "model:churn@1", "--upstream")
    assert "train@1" in lineage and "train_spine@1" in lineage and "purchases@" in lineage, lineage


def test_pinned_versions_and_a_recorded_spine(client, repo, labels):
    want = joined(repo)
    client.get_historical_features(labels, service="churn", register="train")
    sources = [d["ref"] for d in client.datasets() if d["kind"] == "source"]
    assert sources == ["purchases@1"], sources
    by_name = client.get_historical_features(
        "train_spine@1", service="churn", source_versions=sources, as_of=dt.datetime.now(dt.timezone.utc)
    )
    assert_same(by_name, want)
    with pytest.raises(quiver.NotFoundError, match="2000-01-01"):
        client.get_historical_features("train_spine@1", service="churn", as_of="2000-01-01T00:00:00Z")


def test_online_lookups_equal_quiver_get(client, server, repo):
    users = [1, 2, 3, 150, 299, 10_000]
    refs = [f"spend:{f}" for f in FEATURES]
    got = client.get_online_features({"user_id": users}, refs)
    assert list(got) == ["user_id", *FEATURES]
    assert got["user_id"] == users
    args = ["get", "--json", "--addr", server.address, "--features", ",".join(refs)]
    for u in users:
        args += ["--entity", f"user_id={u}"]
    want = json.loads(run(repo, *args))
    present = 0
    for i, _ in enumerate(users):
        for f, r in zip(FEATURES, refs):
            w = want[i]["features"][r]["value"]
            g = got[f][i]
            assert g == pytest.approx(w) if isinstance(w, float) else g == w, (f, i, g, w)
            present += w is not None
    assert present > 10
    assert got.statuses["amount_7d"][-1] == "NOT_FOUND"
    table = got.to_arrow()
    assert table.num_rows == len(users) and table.column_names == list(got)
    by_service = client.get_online_features({"user_id": [1]}, service="churn", full_feature_names=True)
    assert by_service["spend__max_90d"] == got["max_90d"][:1]


def test_push_is_seen_by_lookups(client):
    at = dt.datetime(2025, 5, 2, tzinfo=dt.timezone.utc)
    r = client.push(
        "spend",
        {"user_id": [5000], "ts": [at - dt.timedelta(hours=1)], "amount": [42.5], "channel": ["kiosk"]},
        at=at,
    )
    assert r == {"rows": 1, "entities": 1}
    got = client.get_online_features({"user_id": [5000]}, ["spend:amount_7d", "spend:last_channel"], at=at)
    assert got["amount_7d"] == [42.5] and got["last_channel"] == ["kiosk"]


def test_errors_carry_the_servers_message(client, labels):
    with pytest.raises(quiver.NotFoundError, match="nope"):
        client.get_historical_features(labels, ["spend:nope"])
    with pytest.raises(quiver.InvalidArgumentError, match="user_id"):
        client.get_historical_features(labels.drop_columns(["user_id"]), service="churn")
    with pytest.raises(quiver.InvalidArgumentError, match="when"):
        client.get_historical_features(labels, service="churn", spine_timestamp="when")
    with pytest.raises(quiver.NotFoundError, match="nothing"):
        client.dataset("nothing@1")
    with pytest.raises(quiver.NotFoundError, match="nope"):
        client.get_online_features({"user_id": [1]}, ["spend:nope"])
    with pytest.raises(quiver.NotFoundError):
        client.model("ghost")
    with pytest.raises(TypeError, match="DataFrame"):
        client.get_historical_features(42, service="churn")
    with pytest.raises(ValueError):
        client.get_historical_features(labels)
    # the server is still there
    assert client.get_historical_features(labels.slice(0, 3), service="churn").num_rows == 3


def test_an_unreachable_server_is_unavailable(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with quiver.Client(f"127.0.0.1:{port}", timeout=2) as c:
        with pytest.raises(quiver.UnavailableError):
            c.get_online_features({"user_id": [1]}, ["spend:amount_7d"])


def test_tokens_and_roles_from_python(repo, labels):
    from conftest import Server

    run(repo, "materialize", "--end", "2025-05-01T00:00:00Z")
    reader = run(repo, "tokens", "create", "--name", "notebook", "--role", "reader").strip()
    writer = run(repo, "tokens", "create", "--name", "trainer", "--role", "writer").strip()
    server = Server(repo, "--auth")
    try:
        with quiver.Client(server.address) as anonymous:
            with pytest.raises(quiver.UnauthenticatedError):
                anonymous.get_online_features({"user_id": [1]}, ["spend:amount_7d"])
            with pytest.raises(quiver.UnauthenticatedError):
                anonymous.get_historical_features(labels, service="churn")
        with quiver.Client(server.address, token=reader) as c:
            assert c.get_online_features({"user_id": [1]}, ["spend:amount_7d"])["user_id"] == [1]
            assert c.datasets() == []
            with pytest.raises(quiver.PermissionDeniedError, match="writer"):
                c.get_historical_features(labels, service="churn")
            with pytest.raises(quiver.PermissionDeniedError, match="writer"):
                c.push("spend", {"user_id": [1], "ts": [dt.datetime(2025, 5, 1)], "amount": [1.0], "channel": ["web"]})
        with quiver.Client(server.address, token=writer) as c:
            assert c.get_historical_features(labels, service="churn").num_rows == labels.num_rows
    finally:
        server.stop()
    audit = (repo / ".quiver" / "audit.log").read_text()
    assert reader not in audit and writer not in audit
    lines = [json.loads(line) for line in audit.splitlines()]
    assert any(
        (l["token"], l["transport"], l["method"], l["outcome"]) == ("trainer", "flight", "get_historical_features", "ok")
        for l in lines
    ), lines
