"""An HTTP app (FastAPI/ASGI) served by uvicorn on a thread, started and stopped with the service runtime."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn


class HttpServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
