"""The client: one object per server address, speaking gRPC (lookups, pushes, the model
registry) and Arrow Flight (training sets and datasets) on the same port."""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from . import errors
from .v1 import online_pb2, online_pb2_grpc, registry_pb2, registry_pb2_grpc

#: What a spine may be: a table (pyarrow, pandas or Polars) or a recorded dataset's name.
Spine = Union[pa.Table, pa.RecordBatch, "pandas.DataFrame", "polars.DataFrame", str]  # noqa: F821
#: An instant: a datetime (naive means UTC), an ISO-8601 string, or microseconds since the epoch.
Instant = Union[_dt.datetime, str, int]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
# Rows per record batch uploaded: keeps each Flight message well under the server's limit.
_UPLOAD_ROWS = 64 * 1024
# The artifact of a model travels in one message (the server takes up to 256 MiB).
_MAX_MESSAGE = 256 * 1024 * 1024


def _micros(t: _dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return (t - _EPOCH) // _dt.timedelta(microseconds=1)


def _instant(t: Optional[Instant]) -> Optional[Union[int, str]]:
    if t is None or isinstance(t, (int, str)):
        return t
    if isinstance(t, _dt.datetime):
        return _micros(t)
    raise TypeError(f"an instant is a datetime, an ISO-8601 string or microseconds, not {type(t).__name__}")


def to_arrow(data: Any, what: str = "table") -> pa.Table:
    """``data`` as a pyarrow Table: a Table or RecordBatch, a pandas or Polars DataFrame, or a
    mapping of column name to values. pandas and Polars are only imported if given."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, Mapping):
        return pa.table(dict(data))
    module = type(data).__module__.split(".")[0]
    if module == "polars":
        return data.to_arrow()
    if module == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False)
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise TypeError(f"{what}: give a pyarrow Table, a pandas or Polars DataFrame, or a dict of columns, not {type(data).__name__}")


def _value(v: Any) -> online_pb2.Value:
    if v is None:
        return online_pb2.Value()
    if isinstance(v, bool):
        return online_pb2.Value(bool_val=v)
    if isinstance(v, int):
        return online_pb2.Value(int64_val=v)
    if isinstance(v, float):
        return online_pb2.Value(double_val=v)
    if isinstance(v, str):
        return online_pb2.Value(string_val=v)
    if isinstance(v, _dt.datetime):
        return online_pb2.Value(unix_timestamp_micros_val=_micros(v))
    if hasattr(v, "item"):  # a numpy scalar
        return _value(v.item())
    raise TypeError(f"cannot send a {type(v).__name__} ({v!r}); use int, float, str, bool or datetime")


def _values(values: Iterable[Any]) -> online_pb2.RepeatedValue:
    return online_pb2.RepeatedValue(val=[_value(v) for v in values])


def _python(v: online_pb2.Value) -> Any:
    kind = v.WhichOneof("val")
    if kind is None:
        return None
    if kind == "unix_timestamp_micros_val":
        return _EPOCH + _dt.timedelta(microseconds=v.unix_timestamp_micros_val)
    return getattr(v, kind)


class OnlineFeatures(dict):
    """An online lookup: a dict of column name to values (join keys first, then features,
    one value per requested entity), as Feast's ``to_dict()``; ``statuses`` and
    ``event_timestamps`` hold Feast's status names and each value's event time."""

    def __init__(self, columns: Dict[str, list], statuses: Dict[str, List[str]], event_timestamps: Dict[str, list]):
        super().__init__(columns)
        self.statuses = statuses
        self.event_timestamps = event_timestamps

    def to_arrow(self) -> pa.Table:
        """The lookup as a pyarrow Table."""
        return pa.table({k: pa.array(v) for k, v in self.items()})


_STATUS = {
    online_pb2.PRESENT: "PRESENT",
    online_pb2.NOT_FOUND: "NOT_FOUND",
    online_pb2.EXPIRED: "OUTSIDE_MAX_AGE",
    online_pb2.INVALID: "INVALID",
}


def _model(m: registry_pb2.ModelVersionInfo) -> Dict[str, Any]:
    return {
        "name": m.name,
        "version": m.version,
        "ref": f"{m.name}@{m.version}",
        "artifact_hash": m.artifact_hash,
        "artifact_bytes": m.artifact_bytes,
        "dataset": m.dataset,
        "params": dict(m.params),
        "metrics": [{"name": x.name, "eval_dataset": x.eval_dataset, "value": x.value} for x in m.metrics],
        "costs": dict(m.costs),
        "parent": m.parent or None,
        "tags": dict(m.tags),
        "created": _EPOCH + _dt.timedelta(microseconds=m.created_micros),
        "features": list(m.features),
    }


class Client:
    """A connection to ``quiver serve`` at ``address`` (``host:port``; gRPC and Arrow Flight
    share it).

    >>> client = Client("127.0.0.1:6566")
    >>> train = client.get_historical_features(labels, service="churn_v1")  # doctest: +SKIP

    ``timeout`` bounds each gRPC call in seconds (a training set's stream is not bounded).
    ``token`` (from ``quiver tokens create``) is sent with every call; ``tls_ca`` (a PEM file)
    makes the client speak TLS and trust that CA, and ``tls_cert``/``tls_key`` present a
    client certificate to a server that requires one.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:6566",
        *,
        timeout: Optional[float] = 30.0,
        token: Optional[str] = None,
        tls_ca: Optional[Union[str, Path]] = None,
        tls_cert: Optional[Union[str, Path]] = None,
        tls_key: Optional[Union[str, Path]] = None,
    ):
        self.address = address
        self.timeout = timeout
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ]
        self._metadata = [("authorization", f"Bearer {token}")] if token else None
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self._call_options = flight.FlightCallOptions(headers=headers)
        read = lambda p: Path(p).read_bytes() if p is not None else None  # noqa: E731
        if tls_ca is not None or tls_cert is not None:
            ca, cert, key = read(tls_ca), read(tls_cert), read(tls_key)
            credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            self._channel = grpc.secure_channel(address, credentials, options=options)
            kwargs: Dict[str, Any] = {}
            if ca is not None:
                kwargs["tls_root_certs"] = ca
            if cert is not None:
                kwargs["cert_chain"], kwargs["private_key"] = cert, key
            self._flight = flight.FlightClient(f"grpc+tls://{address}", **kwargs)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
            self._flight = flight.FlightClient(f"grpc://{address}")
        self._online = online_pb2_grpc.OnlineServiceStub(self._channel)
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        #: What the last training set's build reported: rows, columns, ``registered``
        #: (``NAME@VERSION (hash …)`` when registered) and the plan.
        self.last_build: Dict[str, Any] = {}

    def close(self) -> None:
        """Close the connections."""
        self._channel.close()
        self._flight.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_grpc(e) from None

    # ---- training sets and datasets (Arrow Flight)

    def get_historical_features(
        self,
        spine: Spine,
        features: Optional[Sequence[str]] = None,
        *,
        service: Optional[str] = None,
        full_feature_names: bool = False,
        as_of: Optional[Instant] = None,
        source_versions: Optional[Sequence[str]] = None,
        register: Optional[str] = None,
        spine_name: Optional[str] = None,
        spine_timestamp: Optional[str] = None,
    ) -> pa.Table:
        """The point-in-time training set of ``spine``: one row per spine row, in spine order,
        the spine's columns then the features (``features`` as ``"view:feature"``, or a
        feature ``service``).

        ``spine`` is a pyarrow Table, a pandas or Polars DataFrame (sent over Arrow Flight),
        or the name of a recorded spine dataset (``"labels@2"``). ``as_of`` reads every source
        as it was recorded at that instant and ``source_versions`` pins some
        (``["events@3"]``), as ``quiver join`` does; ``register`` records the training set as
        the next version of that dataset, with its lineage (the uploaded spine is recorded as
        ``spine_name``, default ``REGISTER_spine``). What the build reported is in
        :attr:`last_build`.
        """
        if (features is None) == (service is None):
            raise ValueError("give features or service, not both or neither")
        command: Dict[str, Any] = {"api": "get_historical_features", "command_id": str(uuid.uuid4())}
        if features is not None:
            if isinstance(features, str):
                raise TypeError('features: a list of "view:feature" strings, not one string')
            command["features"] = list(features)
        else:
            command["feature_service"] = service
        if full_feature_names:
            command["full_feature_names"] = True
        if as_of is not None:
            command["as_of"] = _instant(as_of)
        if source_versions:
            command["source_versions"] = list(source_versions)
        if register:
            command["register"] = register
        if spine_name:
            command["spine_name"] = spine_name
        if spine_timestamp:
            command["spine_timestamp"] = spine_timestamp
        if isinstance(spine, str):
            command["spine"] = spine
            body = json.dumps(command).encode()
        else:
            table = to_arrow(spine, "spine")
            body = json.dumps(command).encode()
            self._upload(body, table)
        try:
            info = self._flight.get_flight_info(flight.FlightDescriptor.for_command(body), self._call_options)
            table, summary = self._read(info.endpoints[0].ticket)
        except (pa.ArrowException, flight.FlightError) as e:
            raise errors.from_flight(e) from None
        self.last_build = summary or {}
        return table

    def _upload(self, command: bytes, table: pa.Table) -> None:
        descriptor = flight.FlightDescriptor.for_command(command)
        try:
            writer, reader = self._flight.do_put(descriptor, table.schema, self._call_options)
            with writer:
                writer.write_table(table, max_chunksize=_UPLOAD_ROWS)
                writer.done_writing()
                reader.read()
        except (pa.ArrowException, flight.FlightError) as e:
            raise errors.from_flight(e) from None

    def _read(self, ticket: flight.Ticket) -> Tuple[pa.Table, Optional[Dict[str, Any]]]:
        reader = self._flight.do_get(ticket, self._call_options)
        batches: List[pa.RecordBatch] = []
        summary = None
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            if chunk.data is not None:
                batches.append(chunk.data)
            if chunk.app_metadata is not None and chunk.app_metadata.size:
                summary = json.loads(chunk.app_metadata.to_pybytes())
        return pa.Table.from_batches(batches, schema=reader.schema), summary

    def datasets(self) -> List[Dict[str, Any]]:
        """Every recorded dataset version (sources, spines, training sets): name, version,
        kind, content hash, when it was made, the operation that made it and its columns."""
        try:
            infos = list(self._flight.list_flights(b"", self._call_options))
        except (pa.ArrowException, flight.FlightError) as e:
            raise errors.from_flight(e) from None
        out = []
        for info in infos:
            d = json.loads(info.app_metadata)
            d["ref"] = f"{d['name']}@{d['version']}"
            d["created"] = _EPOCH + _dt.timedelta(microseconds=d.pop("created_micros"))
            out.append(d)
        return out

    def dataset(self, name: str) -> pa.Table:
        """The rows of a recorded dataset version, ``"train@3"`` (or ``"train"``: its latest)."""
        command = json.dumps({"api": "get_dataset", "name": name}).encode()
        try:
            return self._read(flight.Ticket(command))[0]
        except (pa.ArrowException, flight.FlightError) as e:
            raise errors.from_flight(e) from None

    # ---- online (gRPC)

    def get_online_features(
        self,
        entities: Mapping[str, Sequence[Any]],
        features: Optional[Sequence[str]] = None,
        *,
        service: Optional[str] = None,
        full_feature_names: bool = False,
        at: Optional[_dt.datetime] = None,
    ) -> OnlineFeatures:
        """The latest values of ``features`` (or a feature ``service``) for ``entities``
        (join key to values, e.g. ``{"user_id": [1, 2]}``), as of now or ``at``."""
        if (features is None) == (service is None):
            raise ValueError("give features or service, not both or neither")
        request = online_pb2.GetOnlineFeaturesRequest(
            entities={k: _values(v) for k, v in entities.items()},
            full_feature_names=full_feature_names,
        )
        if features is not None:
            if isinstance(features, str):
                raise TypeError('features: a list of "view:feature" strings, not one string')
            request.features.val.extend(features)
        else:
            request.feature_service = service
        if at is not None:
            request.at_micros = _micros(at)
        r = self._call(self._online.GetOnlineFeatures, request)
        names = list(r.metadata.feature_names.val)
        # join keys first, as Feast's to_dict() has them
        columns: Dict[str, list] = {k: list(v) for k, v in entities.items()}
        statuses: Dict[str, List[str]] = {k: ["PRESENT"] * len(v) for k, v in columns.items()}
        times: Dict[str, list] = {k: [None] * len(v) for k, v in columns.items()}
        for name, vector in zip(names, r.results):
            columns[name] = [_python(v) for v in vector.values]
            statuses[name] = [_STATUS.get(s, "INVALID") for s in vector.statuses]
            times[name] = [
                _EPOCH + _dt.timedelta(microseconds=t) if t else None for t in vector.event_timestamps_micros
            ]
        return OnlineFeatures(columns, statuses, times)

    def push(self, view: str, table: Any, *, to_offline: bool = False, at: Optional[_dt.datetime] = None) -> Dict[str, int]:
        """Push rows (a pyarrow Table, a pandas or Polars DataFrame, or a dict of columns) with
        the columns of ``view``'s source to the online store, updating every view of that
        source; ``to_offline`` also appends them to the source. Returns rows and entities."""
        t = to_arrow(table, "table")
        request = online_pb2.PushRequest(
            feature_view=view,
            columns={name: _values(t.column(name).to_pylist()) for name in t.column_names},
            to_offline=to_offline,
        )
        if at is not None:
            request.at_micros = _micros(at)
        r = self._call(self._online.Push, request)
        return {"rows": r.rows, "entities": r.entities}

    # ---- models (gRPC)

    def register_model(
        self,
        name: str,
        artifact_path: Union[str, Path],
        dataset: str,
        *,
        metrics: Optional[Mapping[str, Union[float, Tuple[str, float]]]] = None,
        eval_dataset: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        costs: Optional[Mapping[str, float]] = None,
        parent: Optional[str] = None,
        seed: Optional[int] = None,
        tags: Optional[Mapping[str, str]] = None,
    ) -> Dict[str, Any]:
        """Register a model trained on training set ``dataset`` (``"train@3"``): its artifact's
        bytes are stored content-addressed and its lineage runs to the features and sources.

        ``metrics`` maps a metric to its value on ``eval_dataset``, or to
        ``(eval_dataset, value)``; ``params`` are training parameters (as text), ``costs``
        named costs (``size_bytes`` is added from the artifact).
        """
        path = Path(artifact_path)
        values = []
        for metric, v in (metrics or {}).items():
            if isinstance(v, tuple):
                on, value = v
            else:
                if eval_dataset is None:
                    raise ValueError(f"metric {metric!r}: give eval_dataset=, or (eval_dataset, value)")
                on, value = eval_dataset, v
            values.append(registry_pb2.MetricValue(name=metric, eval_dataset=on, value=float(value)))
        request = registry_pb2.RegisterModelRequest(
            name=name,
            artifact=path.read_bytes(),
            artifact_name=path.name,
            dataset=dataset,
            params={k: str(v) for k, v in (params or {}).items()},
            metrics=values,
            costs={k: float(v) for k, v in (costs or {}).items()},
            tags=dict(tags or {}),
        )
        if parent is not None:
            request.parent = parent
        if seed is not None:
            request.seed = seed
        return _model(self._call(self._registry.RegisterModel, request))

    def models(self, name: str = "") -> List[Dict[str, Any]]:
        """Every version of model ``name``, or the latest version of every model."""
        r = self._call(self._registry.ListModels, registry_pb2.ListModelsRequest(name=name))
        return [_model(m) for m in r.models]

    def model(self, ref: str) -> Dict[str, Any]:
        """One model version: ``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS``."""
        return _model(self._call(self._registry.GetModel, registry_pb2.GetModelRequest(model=ref)))

    def lineage(self, artifact: str, *, upstream: bool = True, downstream: bool = True) -> List[Dict[str, Any]]:
        """The lineage edges of a dataset, feature view or model version (``"train@3"``,
        ``"model:churn@2"``): each ``{"from", "to", "operation", "depth", "upstream"}``."""
        r = self._call(
            self._registry.Lineage,
            registry_pb2.LineageRequest(artifact=artifact, upstream=upstream, downstream=downstream),
        )
        return [
            {"from": getattr(e, "from"), "to": e.to, "operation": e.operation, "depth": e.depth, "upstream": e.upstream}
            for e in r.edges
        ]

    def select_best(
        self,
        metric: str,
        on: str,
        *,
        where: str = "",
        max_costs: Optional[Mapping[str, float]] = None,
        minimize: bool = False,
    ) -> Dict[str, Any]:
        """The best model version by ``metric`` on evaluation dataset ``on`` among those
        satisfying the SQL filter ``where`` and the cost limits ``max_costs``. Returns
        ``{"found", "model", "metric"}``, or when nothing fits the closest candidate and what
        it violates."""
        r = self._call(
            self._registry.SelectBest,
            registry_pb2.SelectBestRequest(
                metric=metric, on=on, where=where, max={k: float(v) for k, v in (max_costs or {}).items()}, minimize=minimize
            ),
        )
        return {
            "found": r.found,
            "model": _model(r.model) if r.found else None,
            "metric": r.metric if r.found else None,
            "closest": r.closest or None,
            "violations": list(r.violations),
        }
