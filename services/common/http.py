"""An HTTP app (FastAPI/ASGI) served by uvicorn on a thread, started and stopped with the service runtime,
behind the same bearer token as the service's gRPC API when one is configured."""

from __future__ import annotations

import json
import threading
from typing import Any

import uvicorn
from pydantic import SecretStr

from services.common.auth import bearer_matches

# Kubernetes' HTTP probes send no credentials, so the health check stays reachable, as on gRPC.
OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    """ASGI middleware: every request but ``OPEN_PATHS`` needs ``Authorization: Bearer <token>`` (what the
    OpenAI client sends for its ``api_key``), else 401 with an OpenAI-style error body; a WebSocket
    handshake without it is closed before it is accepted (the server answers 403)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        guarded = scope["type"] in ("http", "websocket") and scope["path"] not in OPEN_PATHS
        if guarded and not bearer_matches(dict(scope["headers"]).get(b"authorization", b""), self._token):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # policy violation
                return
            body = json.dumps(
                {"error": {"message": "missing or invalid bearer token", "type": "invalid_request_error"}}
            ).encode()
            headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class HttpServer:
    def __init__(self, app: Any, host: str, port: int, token: SecretStr | None = None) -> None:
        if token is not None:
            app = BearerAuth(app, token.get_secret_value())
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
