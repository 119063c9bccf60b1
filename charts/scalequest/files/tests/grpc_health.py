"""helm test: ask one service's standard gRPC health endpoint (grpc.health.v1.Health/Check).

Usage: python grpc_health.py HOST:PORT SERVICE_NAME -- exits 0 when the service is SERVING.
Runs in the scalequest image (grpcio + grpcio-health-checking); passed to `python -c`.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

target, service = sys.argv[1], sys.argv[2]
with grpc.insecure_channel(target) as channel:
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    except grpc.RpcError as e:
        print(f"{target} {service}: {e.code().name}: {e.details()}")
        sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
print(f"{target} {service}: {status}")
sys.exit(0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1)
