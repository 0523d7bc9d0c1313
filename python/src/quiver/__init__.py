"""Quiver's Python client: point-in-time training sets as pyarrow Tables over Arrow Flight,
online lookups and pushes, recorded datasets and the model registry, from one
``quiver serve`` address.

>>> from quiver import Client
>>> client = Client("127.0.0.1:6566")                                  # doctest: +SKIP
>>> train = client.get_historical_features(labels, service="churn_v1")  # doctest: +SKIP
"""

from .client import Client, OnlineFeatures, to_arrow
from .errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    QuiverError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "Client",
    "OnlineFeatures",
    "to_arrow",
    "QuiverError",
    "NotFoundError",
    "InvalidArgumentError",
    "FailedPreconditionError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "UnavailableError",
    "ResourceExhaustedError",
    "AbortedError",
]
