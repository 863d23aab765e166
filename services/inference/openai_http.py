"""OpenAI-compatible HTTP front end (FastAPI): models, completions, chat completions, SSE streaming.

Validation errors are 422 (FastAPI's request models); a well-formed request the engine cannot
serve (unknown model, empty prompt, context over the limit, bad sampling values) is 400 or 404
with OpenAI's error body, and never disturbs the other requests.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from services.inference.engine import Engine, RequestHandle
from services.inference.replay import ReplayEngine
from services.inference.sampling import SamplingParams


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Sampling(BaseModel):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # vLLM's extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    # Faultline extension: which attention backend serves this request, e.g. {"backend": "hata"}.
    attention: dict[str, Any] | None = None

    def params(self, default_max: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        try:
            return SamplingParams(
                max_tokens=self.max_tokens or default_max,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                seed=self.seed,
                stop=stop,
                attention=dict(self.attention or {}),
            ).validate()
        except ValueError as error:
            raise ApiError(400, str(error), "invalid_sampling_parameters") from error


class CompletionRequest(_Sampling):
    prompt: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


def create_app(engine: Engine | ReplayEngine, model_name: str, default_max_tokens: int = 256) -> FastAPI:
    app = FastAPI(title="Faultline inference", version="1")

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        body = {"error": {"message": error.message, "type": "invalid_request_error", "code": error.code}}
        return JSONResponse(body, status_code=error.status)

    def submit(body: _Sampling, prompt: str) -> RequestHandle:
        if body.model != model_name:
            raise ApiError(
                404, f"model {body.model!r} does not exist; this server serves {model_name!r}", "model_not_found"
            )
        params = body.params(default_max_tokens)
        try:
            return engine.submit_text(prompt, params)
        except ValueError as error:
            raise ApiError(400, str(error), "invalid_prompt") from error

    async def collect(handle: RequestHandle) -> tuple[str, Any]:
        parts = []
        async for event in handle.aiter():
            parts.append(event.text)
        if event.error:
            raise ApiError(500, event.error, "engine_error")
        return "".join(parts), event

    def usage(event: Any) -> dict[str, int]:
        return {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
        }

    def extension(event: Any) -> dict[str, Any]:
        """Faultline's extension object: what the attention backend measured for this answer."""
        return {"faultline": {"attention": event.attention}} if event.attention else {}

    async def sse(handle: RequestHandle, chunk: Any) -> AsyncIterator[str]:
        try:
            async for event in handle.aiter():
                if event.text or event.finished:
                    payload = chunk(event.text, event.finish_reason if event.finished else None)
                    if event.finished:
                        payload |= {"usage": usage(event), **extension(event)}
                    yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            handle.cancel()  # the client went away mid-stream: stop generating for it

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "faultline"}],
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        handle = submit(body, body.prompt)
        created, rid = int(time.time()), f"cmpl-{uuid.uuid4().hex}"

        def chunk(text: str, reason: str | None) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
            }

        if body.stream:
            return StreamingResponse(sse(handle, chunk), media_type="text/event-stream")
        text, final = await collect(handle)
        return {**chunk(text, final.finish_reason), "usage": usage(final), **extension(final)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        try:
            prompt = engine.tokenizer.apply_chat_template([m.model_dump() for m in body.messages])
        except ValueError as error:
            raise ApiError(400, str(error), "invalid_messages") from error
        handle = submit(body, prompt)
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"

        def chunk(text: str, reason: str | None) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": reason}],
            }

        if body.stream:
            return StreamingResponse(sse(handle, chunk), media_type="text/event-stream")
        text, final = await collect(handle)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": final.finish_reason}
            ],
            "usage": usage(final),
            **extension(final),
        }

    return app
