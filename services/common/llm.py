"""The LLM client every service shares: any OpenAI-compatible endpoint (the inference service, its replay
backend, a vendor), JSON answers checked against a schema.

Answers are meant to be JSON; what comes back is often not quite. Repair, cheapest first:
1. parse the answer as it is;
2. strip Markdown fences and prose around the outermost JSON value, drop trailing commas;
3. re-ask once, showing the LLM its answer and the parse/validation error.
Every step is deterministic, so a recorded run replays exactly (the re-ask prompt included).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import openai

T = TypeVar("T")

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


class LLMError(Exception):
    """The LLM could not give a usable answer (unreachable, refused the request, or invalid twice)."""


class SchemaError(ValueError):
    """The answer parsed but does not have the shape the stage asks for."""


def parse_json(answer: str) -> Any:
    """The JSON value in ``answer``, after the cheap repairs; raises ``json.JSONDecodeError``."""
    try:
        return json.loads(answer)
    except json.JSONDecodeError:
        pass
    fenced = _FENCE.search(answer)
    text = fenced.group(1) if fenced else answer
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if starts:
        start = min(starts)
        end = max(text.rfind("]"), text.rfind("}"))
        if end > start:
            text = text[start : end + 1]
    return json.loads(_TRAILING_COMMA.sub(r"\1", text))


def validate_schema(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    """The subset of JSON Schema the platform's prompts use (type, required, properties, items, enum, bounds);
    raises SchemaError naming the first offending path."""
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float)}
    if (kind and not isinstance(value, checks[kind])) or (kind == "number" and isinstance(value, bool)):
        raise SchemaError(f"{path}: expected {kind}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} not one of {schema['enum']}")
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "number" and ((low is not None and value < low) or (high is not None and value > high)):
        raise SchemaError(f"{path}: {value} out of range")
    if kind == "object":
        for key in schema.get("required", ()):
            if key not in value:
                raise SchemaError(f"{path}: missing {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate_schema(value[key], sub, f"{path}.{key}")
    if kind == "array":
        for i, item in enumerate(value):
            validate_schema(item, schema.get("items", {}), f"{path}[{i}]")


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repaired: int = 0  # answers fixed without asking again
    reasked: int = 0
    failed: int = 0


class LLMClient:
    def __init__(
        self,
        base_url: str,
        model: str = "replay",
        api_key: str = "unused",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_tokens: int = 2048,
    ) -> None:
        # The openai client retries connection errors, 429 and 5xx with backoff; a 4xx is final.
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)
        self.model, self.max_tokens = model, max_tokens
        self.usage = Usage()
        self.lock = threading.Lock()  # usage is counted from the caller's threads

    def chat(self, messages: list[dict[str, str]], schema: dict[str, Any] | None = None) -> str:
        """One completion; with ``schema`` the endpoint is also asked for constrained JSON (response_format)."""
        extra: dict[str, Any] = {}
        if schema is not None:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        try:
            reply = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=self.max_tokens,
                **extra,
            )
        except openai.APIError as error:
            raise LLMError(f"LLM call failed: {error}") from error
        with self.lock:
            self.usage.calls += 1
            if reply.usage is not None:
                self.usage.prompt_tokens += reply.usage.prompt_tokens
                self.usage.completion_tokens += reply.usage.completion_tokens
        return reply.choices[0].message.content or ""

    def json_call(
        self, messages: list[dict[str, str]], validate: Callable[[Any], T], schema: dict[str, Any] | None = None
    ) -> T:
        """Ask, parse, validate; repair or re-ask once. ``validate`` raises ValueError on a bad shape."""
        answer = self.chat(messages, schema)
        try:
            return self._check(answer, validate)
        except ValueError as error:
            retry = [
                *messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"That answer is not valid ({error}). Reply with the corrected JSON only."},
            ]
            with self.lock:
                self.usage.reasked += 1
            try:
                return self._check(self.chat(retry, schema), validate)
            except ValueError as again:
                with self.lock:
                    self.usage.failed += 1
                raise LLMError(f"invalid answer after one re-ask: {again}") from again

    def _check(self, answer: str, validate: Callable[[Any], T]) -> T:
        try:
            value = json.loads(answer)
        except json.JSONDecodeError:
            try:
                value = parse_json(answer)
            except json.JSONDecodeError as error:
                raise ValueError(f"not JSON: {error.msg} at line {error.lineno} column {error.colno}") from error
            with self.lock:
                self.usage.repaired += 1
        return validate(value)
