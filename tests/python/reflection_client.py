"""grpcio's own reflection client (grpc_reflection.v1alpha, as grpcurl's older releases,
Postman and evans speak it) against `quiver serve`: list the services and describe one.

    python reflection_client.py HOST:PORT
"""
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

channel = grpc.insecure_channel(sys.argv[1])
db = ProtoReflectionDescriptorDatabase(channel)
services = list(db.get_services())
pool = DescriptorPool(db)
online = pool.FindServiceByName("quiver.v1.OnlineService")
request = pool.FindMessageTypeByName("quiver.v1.GetOnlineFeaturesRequest")
print(json.dumps({
    "services": services,
    "methods": [m.name for m in online.methods],
    "request_fields": [f.name for f in request.fields],
}))
