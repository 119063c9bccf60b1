"""gRPC scaffold shared by every service: the server (health, reflection, size limits,
graceful stop) and the one interceptor that maps domain errors to status codes."""

from libs.grpc.interceptors import ErrorMappingInterceptor, RpcLimits, status_for
from libs.grpc.server import GrpcServer, ServicerSpec

__all__ = ["ErrorMappingInterceptor", "GrpcServer", "RpcLimits", "ServicerSpec", "status_for"]
