"""The bearer-token check: its parsing, the HTTP middleware on WebSocket handshakes, refused RPCs in the metrics."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from services.common.auth import bearer_matches
from services.common.grpc_server import RPCS, GrpcServer
from services.common.http import BearerAuth
from services.common.settings import GrpcSettings


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        (b"Bearer s3cret", True),
        (b"bearer s3cret", True),  # the scheme is case-insensitive
        (b"BEARER s3cret", True),
        (b"Bearer S3CRET", False),  # the token is not
        (b"s3cret", False),
        (b"Basic s3cret", False),
        (b"Bearer s3cret ", False),
        (b"Bearer  s3cret", False),
        (b"", False),
    ],
)
def test_bearer_matches(authorization: bytes, accepted: bool) -> None:
    assert bearer_matches(authorization, b"s3cret") is accepted


def _handshake(guard: BearerAuth, headers: list[tuple[bytes, bytes]]) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/stream", "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return sent


def test_a_websocket_handshake_without_the_token_is_closed_before_the_app_sees_it() -> None:
    reached: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        reached.append(scope["path"])

    guard = BearerAuth(app, "s3cret")
    assert _handshake(guard, []) == [{"type": "websocket.close", "code": 1008}]
    assert _handshake(guard, [(b"authorization", b"Bearer nope")]) == [{"type": "websocket.close", "code": 1008}]
    assert reached == []
    assert _handshake(guard, [(b"authorization", b"Bearer s3cret")]) == [] and reached == ["/v1/stream"]


def test_a_call_refused_for_its_token_is_counted() -> None:
    server = GrpcServer(GrpcSettings(port=0, auth_token=SecretStr("s3cret")), [])
    port = server.start()
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    refused = RPCS.labels(method, grpc.StatusCode.UNAUTHENTICATED.name)
    before = refused._value.get()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            with pytest.raises(grpc.RpcError) as refusal:
                list(stub.ServerReflectionInfo(request, timeout=10, metadata=[("authorization", "Bearer nope")]))
            assert refusal.value.code() == grpc.StatusCode.UNAUTHENTICATED
            request = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            (reply,) = stub.ServerReflectionInfo(request, timeout=10, metadata=[("authorization", "bearer s3cret")])
            assert reply.list_services_response.service
    finally:
        server.stop(0)
    assert refused._value.get() == before + 1
