"""Auth on every endpoint when a token is set: each service of ``faultline serve`` is built the way its ``main``
builds it (``load_settings`` with ``FAULTLINE_GRPC__AUTH_TOKEN`` in the environment, then ``build``), started on
loopback, and every gRPC method its server registers and every route of its HTTP app is called without the token and
with wrong ones. Methods and routes are listed from the running server and app, not by hand, so a new RPC or page
cannot slip through. Open by design: the gRPC health service and ``/health`` (Kubernetes' probes send no credentials).
"""

from __future__ import annotations

import importlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from starlette.routing import Route

from deploy.kafka.broker import free_port
from services.cli import SERVICES
from services.common.admin import ensure_topics
from services.common.http import BearerAuth, HttpServer
from services.common.pb.faultline.v1 import platform_pb2, platform_pb2_grpc
from services.common.pb.kserve.v2 import open_inference_pb2
from services.common.runtime import ServiceRuntime
from services.common.settings import KafkaSettings, ServiceSettings, load_settings
from services.common.topics import CATALOGUE
from services.inference.kserve import TRITON_SERVICE
from services.inference.shapes import make_random_checkpoint

pytestmark = pytest.mark.integration

TOKEN = "auth-test-t0ken"
RIGHT = f"Bearer {TOKEN}"
# Missing, a wrong token, the right token without its scheme, and the right one with a tail.
WRONG = (None, "Bearer wrong", TOKEN, f"{RIGHT}x")
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OPEN_METHODS = {f"/{HEALTH}/Check", f"/{HEALTH}/Watch"}
OPEN_PATHS = {"/health"}
# Inference serves the KServe v2 service under Triton's name, which tritonclient calls, not its proto package's.
PROTO_NAMES = {TRITON_SERVICE: open_inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name}
HTTP_FRONT_ENDS = {"inference", "console"}  # the services whose runtime also serves an HTTP app


def _overrides(name: str, root: Path) -> dict[str, object]:
    """What each test needs beyond the defaults: temporary state, free HTTP ports, groups of its own."""
    group = f"auth-{uuid.uuid4().hex[:6]}"
    if name == "inference":
        checkpoint = make_random_checkpoint("tiny", root / "tiny-llm", max_context=256)
        return {"model_path": Path(checkpoint), "http_port": free_port(), "max_batch_size": 2, "prefill_chunk": 32}
    if name == "embedding":
        return {"consumer_group": group, "torch_threads": 1}
    if name == "detector":
        return {"data_dir": root / "detector", "group_id": group, "torch_threads": 1}
    if name == "rca":
        return {"group_id": group}
    if name == "kg-builder":
        return {"store_path": root / "kg.sqlite", "export_root": root / "exports", "group_id": group}
    if name == "console":
        return {"http_port": free_port()}
    raise AssertionError(f"service {name!r} of `faultline serve` has no auth test yet: add it to _overrides")


@dataclass
class Served:
    name: str
    runtime: ServiceRuntime
    channel: grpc.Channel
    http: list[HttpServer]


def _settings_class(main: object) -> type:
    """The one ``ServiceSettings`` subclass a service's ``main`` module declares."""
    found = [
        value
        for value in vars(main).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings) and value.__module__ == main.__name__  # type: ignore[attr-defined]
    ]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module", params=sorted(SERVICES))
def served(
    request: pytest.FixtureRequest, kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name = request.param
    ensure_topics(kafka, CATALOGUE)  # as `faultline topics` would: no consumer auto-creates a 1-partition topic
    main = importlib.import_module(SERVICES[name].partition(":")[0])
    overrides = _overrides(name, tmp_path_factory.mktemp(name.replace("-", "_")))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAULTLINE_GRPC__AUTH_TOKEN", TOKEN)
        env.setenv("FAULTLINE_GRPC__SHUTDOWN_GRACE_S", "0.5")
        settings = load_settings(
            _settings_class(main), grpc_port=0, kafka=kafka, metrics_port=0, heartbeat_s=0, **overrides
        )
    runtime, _ = main.build(settings)
    port = runtime.start()
    http = [
        start.__self__
        for start, _stop in runtime._lifecycle
        if isinstance(getattr(start, "__self__", None), HttpServer)
    ]
    try:
        for server in http:
            _wait_for_health(_base_url(server))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(name, runtime, channel, http)
    finally:
        runtime.stop_event.set()
        runtime.stop()


def _base_url(server: HttpServer) -> str:
    config = server._server.config
    return f"http://{config.host}:{config.port}"


def _wait_for_health(base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{base}/health never answered"
        time.sleep(0.1)


# -- gRPC ------------------------------------------------------------------------------------------------------


def _served_methods(server: grpc.Server) -> dict[str, grpc.RpcMethodHandler]:
    """Every method the server answers, from its own handler tables (grpc has no public API that lists them)."""
    state = server._state  # type: ignore[attr-defined]
    methods = dict(state.registered_method_handlers)
    for generic in state.generic_handlers:
        table = getattr(generic, "_method_handlers", None)
        assert table is not None, f"cannot list the methods of the generic handler {generic!r}"
        methods.update(table)
    return methods


def _methods(served: Served) -> dict[str, grpc.RpcMethodHandler]:
    assert served.runtime.grpc is not None
    return _served_methods(served.runtime.grpc.server)


def _call(served: Served, method: str, handler: grpc.RpcMethodHandler, authorization: str | None) -> grpc.StatusCode:
    """Calls ``method`` with an empty message (raw bytes, so any method will do); returns the status."""
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    stub = getattr(served.channel, kind)(method)
    request = iter([b""]) if handler.request_streaming else b""
    metadata = None if authorization is None else [("authorization", authorization)]
    try:
        reply = stub(request, timeout=20, metadata=metadata)
        if handler.response_streaming:
            next(reply, None)  # the first answer (or the end) is enough
            reply.cancel()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK


def test_the_server_serves_exactly_the_methods_of_its_declared_services(served: Served) -> None:
    methods = _methods(served)
    declared = {
        *served.runtime.info().grpc_services,
        HEALTH,
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
    }
    pool = descriptor_pool.Default()
    expected = {
        f"/{name}/{m.name}" for name in declared for m in pool.FindServiceByName(PROTO_NAMES.get(name, name)).methods
    }
    assert set(methods) == expected
    assert len(methods) >= len(OPEN_METHODS) + 2  # health, the platform's and reflection (console has no API more)


@pytest.mark.parametrize("authorization", WRONG, ids=("missing", "wrong", "no-scheme", "tail"))
def test_every_method_but_health_refuses_a_call_without_the_right_token(
    served: Served, authorization: str | None
) -> None:
    methods = _methods(served)
    codes = {method: _call(served, method, handler, authorization) for method, handler in sorted(methods.items())}
    guarded = {m: c for m, c in codes.items() if m not in OPEN_METHODS}
    assert guarded and all(c == grpc.StatusCode.UNAUTHENTICATED for c in guarded.values()), {
        m: c.name for m, c in guarded.items() if c != grpc.StatusCode.UNAUTHENTICATED
    }
    assert {m: codes[m] for m in OPEN_METHODS} == dict.fromkeys(OPEN_METHODS, grpc.StatusCode.OK)


def test_the_right_token_gets_every_unary_method_past_auth(served: Served) -> None:
    methods = _methods(served)
    unary = {m: h for m, h in methods.items() if not (h.request_streaming or h.response_streaming)}
    codes = {method: _call(served, method, handler, RIGHT) for method, handler in sorted(unary.items())}
    assert not [m for m, c in codes.items() if c == grpc.StatusCode.UNAUTHENTICATED], codes
    # A call that gets past auth may still be refused for its empty request; the platform's must answer.
    info = platform_pb2_grpc.PlatformServiceStub(served.channel).GetServiceInfo(
        platform_pb2.GetServiceInfoRequest(), timeout=10, metadata=[("authorization", RIGHT)]
    )
    assert info.name == served.name
    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    (reply,) = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        timeout=10,
        metadata=[("authorization", RIGHT)],
    )
    listed = {s.name for s in reply.list_services_response.service}
    assert {m.split("/")[1] for m in methods} <= listed


# -- HTTP ------------------------------------------------------------------------------------------------------


def _routes(server: HttpServer) -> list[tuple[str, str]]:
    """(method, path) for every route of the app behind ``server``; path parameters get a placeholder value."""
    guard = server._server.config.app
    assert isinstance(guard, BearerAuth), f"the HTTP app is served without {BearerAuth.__name__}"
    calls = []
    for route in guard.app.routes:
        # BearerAuth guards WebSocket handshakes too (tests/unit/test_common_auth.py); calling one needs a client here.
        assert isinstance(route, Route), f"{route!r} is not a plain HTTP route"
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        calls += [(method, path) for method in sorted(route.methods or ())]
    return calls


def test_only_inference_and_console_serve_http(served: Served) -> None:
    assert len(served.http) == (1 if served.name in HTTP_FRONT_ENDS else 0)


def test_every_route_but_health_refuses_a_request_without_the_right_token(served: Served) -> None:
    if not served.http:
        pytest.skip(f"{served.name} serves no HTTP")
    for server in served.http:
        base, routes = _base_url(server), _routes(server)
        assert len(routes) >= 5  # the app's pages or API, /health, and FastAPI's /openapi.json and /docs
        # An unknown path is refused before routing too, so the token is checked before anything is revealed.
        for method, path in [*routes, ("GET", "/no-such-page"), ("POST", "/v1/no-such-api")]:
            for authorization in WRONG:
                headers = {} if authorization is None else {"authorization": authorization}
                response = httpx.request(method, base + path, headers=headers, timeout=10)
                if path in OPEN_PATHS:
                    assert response.status_code == 200, (method, path, authorization)
                else:
                    assert response.status_code == 401, (method, path, authorization, response.status_code)
                    assert response.headers["www-authenticate"] == "Bearer"


def test_the_right_token_gets_every_route_past_auth(served: Served) -> None:
    if not served.http:
        pytest.skip(f"{served.name} serves no HTTP")
    for server in served.http:
        base = _base_url(server)
        for method, path in _routes(server):
            # Empty bodies and placeholder ids: 404 or 422 are fine, they come from the app behind the guard.
            response = httpx.request(method, base + path, headers={"authorization": RIGHT}, timeout=30)
            assert response.status_code != 401 and response.status_code < 500, (method, path, response.status_code)


def test_the_console_reaches_kg_builder_with_the_release_token(
    kafka: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One release, one token: the console's knowledge-graph page calls kg-builder with the token both check."""
    kg_main = importlib.import_module(SERVICES["kg-builder"].partition(":")[0])
    console_main = importlib.import_module(SERVICES["console"].partition(":")[0])
    monkeypatch.setenv("FAULTLINE_GRPC__AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("FAULTLINE_GRPC__SHUTDOWN_GRACE_S", "0.5")
    common = {"grpc_port": 0, "kafka": kafka, "metrics_port": 0, "heartbeat_s": 0}
    kg, _ = kg_main.build(load_settings(_settings_class(kg_main), **common, **_overrides("kg-builder", tmp_path)))
    kg_port = kg.start()
    console_settings = load_settings(
        _settings_class(console_main), **common, **_overrides("console", tmp_path), kg_address=f"127.0.0.1:{kg_port}"
    )
    console, _ = console_main.build(console_settings)
    console.start()
    try:
        base = f"http://127.0.0.1:{console_settings.http_port}"
        _wait_for_health(base)
        page = httpx.get(f"{base}/kg/cartservice", headers={"authorization": RIGHT}, timeout=10)
        assert page.status_code == 200, page.text[-500:]
        # The empty graph has no such node: kg-builder got the call past auth and answered it.
        assert "UNAUTHENTICATED" not in page.text and "answered NOT_FOUND" in page.text, page.text[-500:]
    finally:
        for runtime in (console, kg):
            runtime.stop_event.set()
            runtime.stop()
