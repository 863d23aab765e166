"""The gRPC server bootstrap: health, reflection, size limits, deadlines, bearer-token auth, TLS, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from services.common.auth import bearer_matches
from services.common.settings import GrpcSettings

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Kubernetes' gRPC probes send no metadata, so health stays reachable without a token.
_OPEN_METHODS = frozenset({f"/{HEALTH_SERVICE}/Check", f"/{HEALTH_SERVICE}/Watch"})

RPCS = Counter("faultline_grpc_requests_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = Histogram("faultline_grpc_request_seconds", "RPC handling time", ["method"])


@dataclass(frozen=True)
class GrpcService:
    """One service to serve: its full name (for health and reflection) and how to add it."""

    name: str
    register: Callable[[grpc.Server], None]


def _replace_behaviour(handler: grpc.RpcMethodHandler, wrap: Callable[[Any, bool], Any]) -> grpc.RpcMethodHandler:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return handler._replace(**{kind: wrap(behaviour, kind.endswith("_stream"))})  # type: ignore[attr-defined]
    return handler


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in _OPEN_METHODS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if bearer_matches(str(metadata.get("authorization", "")).encode(), self._token):
            return handler

        def deny(behaviour: Any, _streams: bool) -> Any:
            def reject(_request: Any, context: grpc.ServicerContext) -> None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

            return reject

        return _replace_behaviour(handler, deny)


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Counts RPCs by status code, times them, and refuses work whose deadline already passed."""

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def observe(behaviour: Any, streams: bool) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    RPCS.labels(method, grpc.StatusCode.DEADLINE_EXCEEDED.name).inc()
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before handling")
                start = time.perf_counter()
                try:
                    result = behaviour(request, context)
                except BaseException:  # an abort (a refused token too) ends a streaming call here as well
                    self._record(context, method, start)
                    raise
                if streams:
                    return self._stream(result, context, method, start)
                self._record(context, method, start)
                return result

            return call

        return _replace_behaviour(handler, observe)

    def _stream(
        self, responses: Iterator[Any], context: grpc.ServicerContext, method: str, start: float
    ) -> Iterator[Any]:
        try:
            yield from responses
        finally:
            self._record(context, method, start)

    @staticmethod
    def _record(context: grpc.ServicerContext, method: str, start: float) -> None:
        code = context.code() or grpc.StatusCode.OK
        RPCS.labels(method, getattr(code, "name", str(code))).inc()
        RPC_SECONDS.labels(method).observe(time.perf_counter() - start)


class GrpcServer:
    def __init__(self, settings: GrpcSettings, services: Sequence[GrpcService]) -> None:
        self._settings = settings
        self._services = list(services)
        # observability outermost: a call refused for its token is counted (code UNAUTHENTICATED) too
        interceptors: list[grpc.ServerInterceptor] = [ObservabilityInterceptor()]
        if settings.auth_token is not None:
            interceptors.append(BearerTokenInterceptor(settings.auth_token.get_secret_value()))
        limit = settings.max_message_bytes
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for service in self._services:
            service.register(self.server)
        reflection.enable_server_reflection(
            [s.name for s in self._services] + [HEALTH_SERVICE, reflection.SERVICE_NAME], self.server
        )
        self.port = 0

    def start(self) -> int:
        address = f"{self._settings.host}:{self._settings.port}"
        if self._settings.tls_certfile is not None and self._settings.tls_keyfile is not None:
            credentials = grpc.ssl_server_credentials(
                [(self._settings.tls_keyfile.read_bytes(), self._settings.tls_certfile.read_bytes())]
            )
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        self.server.start()
        self.set_serving(True)
        return self.port

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *(s.name for s in self._services)]:
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING first so load balancers drain, then let in-flight RPCs finish."""
        self.set_serving(False)
        self.server.stop(self._settings.shutdown_grace_s if grace is None else grace).wait()
