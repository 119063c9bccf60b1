"""helm test: ask one service's standard gRPC health endpoint (grpc.health.v1.Health/Check).

Usage: python grpc_health.py HOST:PORT SERVICE_NAME -- exits 0 when the service is SERVING.
Runs in the scalequest image (grpcio + grpcio-health-checking); passed to `python -c`.
With SQ_GRPC_TLS_CA set (tls.grpc) the channel is TLS, verified with that CA, presenting
SQ_GRPC_TLS_CERT/KEY as client certificate when set (mutual TLS).
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(env):
    path = os.environ.get(env, "")
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def open_channel(target):
    ca = _read("SQ_GRPC_TLS_CA")
    if ca is None:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=_read("SQ_GRPC_TLS_KEY"),
                                         certificate_chain=_read("SQ_GRPC_TLS_CERT"))
    return grpc.secure_channel(target, creds)


target, service = sys.argv[1], sys.argv[2]
with open_channel(target) as channel:
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    except grpc.RpcError as e:
        print(f"{target} {service}: {e.code().name}: {e.details()}")
        sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
print(f"{target} {service}: {status}")
sys.exit(0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1)
