"""Feast's own Python client reading Quiver's HTTP feature server.

A Feast repository whose online store is `{type: remote, path: URL}`, with entities, feature
views and a feature service that mirror the sample Quiver repository, asks for online
features the way a Feast user does. Writes what it got, as JSON, to OUT.

    python feast_remote.py URL OUT
"""
import json
import os
import sys
import tempfile
from datetime import timedelta

from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Int64, String

url, out = sys.argv[1], sys.argv[2]
repo = tempfile.mkdtemp(prefix="feast-remote-")
os.makedirs(os.path.join(repo, "data"))
with open(os.path.join(repo, "feature_store.yaml"), "w") as f:
    f.write(
        "project: retail\n"
        "registry: data/registry.db\n"
        "provider: local\n"
        f"online_store:\n  type: remote\n  path: {url}\n"
        "entity_key_serialization_version: 3\n"
    )

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
purchases = FileSource(
    name="purchases", path=os.path.join(repo, "data/purchases.parquet"), timestamp_field="purchase_date"
)
profiles = FileSource(
    name="profiles", path=os.path.join(repo, "data/profiles.parquet"), timestamp_field="updated_at"
)
user_purchases = FeatureView(
    name="user_purchases",
    entities=[user],
    ttl=timedelta(days=0),
    schema=[
        Field(name="amt_30d", dtype=Int64),
        Field(name="amt_lifetime", dtype=Int64),
        Field(name="clothing_7d", dtype=Int64),
        Field(name="last_category", dtype=String),
    ],
    online=True,
    source=purchases,
)
user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[Field(name="age", dtype=Int64), Field(name="home_country", dtype=String)],
    online=True,
    source=profiles,
)
churn_v1 = FeatureService(name="churn_v1", features=[user_purchases[["amt_30d"]], user_profile[["age"]]])

store = FeatureStore(repo_path=repo)
store.apply([user, user_purchases, user_profile, churn_v1])

rows = [{"user_id": 1}, {"user_id": 2}, {"user_id": 3}, {"user_id": 7}]
features = [
    "user_purchases:amt_30d",
    "user_purchases:amt_lifetime",
    "user_purchases:clothing_7d",
    "user_purchases:last_category",
    "user_profile:age",
    "user_profile:home_country",
]
listed = store.get_online_features(features=features, entity_rows=rows).to_dict()
service = store.get_online_features(
    features=store.get_feature_service("churn_v1"), entity_rows=rows, full_feature_names=True
).to_dict()
with open(out, "w") as f:
    json.dump({"features": listed, "service": service}, f)
