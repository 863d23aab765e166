"""The bootstrap on a real gRPC server over loopback."""

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.pb.faultline.v1 import platform_pb2, platform_pb2_grpc
from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, ServiceSettings


def _runtime(token: str | None = None) -> ServiceRuntime:
    settings = ServiceSettings(
        instance="test-0",
        metrics_port=0,
        heartbeat_s=0,
        grpc=GrpcSettings(port=0, auth_token=token, shutdown_grace_s=0.5),
    )
    return ServiceRuntime("probe", settings)


@pytest.fixture
def open_server() -> Iterator[grpc.Channel]:
    runtime = _runtime()
    port = runtime.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    runtime.stop()


@pytest.fixture
def guarded_server() -> Iterator[grpc.Channel]:
    runtime = _runtime(token="t0ken")
    port = runtime.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    runtime.stop()


def test_health_is_serving_for_the_server_and_each_service(open_server: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(open_server)
    for name in ("", "faultline.v1.PlatformService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_service_info_and_reflection(open_server: grpc.Channel) -> None:
    info = platform_pb2_grpc.PlatformServiceStub(open_server).GetServiceInfo(
        platform_pb2.GetServiceInfoRequest(), timeout=5
    )
    assert (info.name, info.instance) == ("probe", "test-0")
    assert info.started_at.seconds > 0
    reflection = reflection_pb2_grpc.ServerReflectionStub(open_server)
    (reply,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in reply.list_services_response.service}
    assert {"faultline.v1.PlatformService", "grpc.health.v1.Health"} <= names


def test_auth_rejects_a_call_without_the_token(guarded_server: grpc.Channel) -> None:
    stub = platform_pb2_grpc.PlatformServiceStub(guarded_server)
    request = platform_pb2.GetServiceInfoRequest()
    for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "t0ken")]):
        with pytest.raises(grpc.RpcError) as error:
            stub.GetServiceInfo(request, timeout=5, metadata=metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in error.value.details()
    assert stub.GetServiceInfo(request, timeout=5, metadata=[("authorization", "Bearer t0ken")]).name == "probe"


def test_auth_leaves_health_open_for_kubernetes_probes(guarded_server: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(guarded_server).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_stop_reports_not_serving_before_closing() -> None:
    runtime = _runtime()
    port = runtime.start()
    assert runtime.grpc is not None
    runtime.grpc.set_serving(False)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    runtime.stop()
