"""The replay backend: recorded LLM answers served through the real APIs, in place of a model.

A large pre-trained LLM cannot run on these machines, yet the rca and kg-builder services talk to
one. So the inference service can serve a *recording* instead: a JSONL file of chat (or text)
requests and the completions an LLM gave, looked up by the request's messages. Everything around
the model is the real thing — OpenAI HTTP and KServe v2 gRPC, streaming, usage counts, errors —
so clients are tested end to end. A request that was never recorded is a client error naming the
missing key, never a made-up answer.

Recordings are made by pointing the service at a live OpenAI-compatible endpoint
(``--record-from URL``): a miss is forwarded there once and appended to the file.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from pathlib import Path
from typing import Any

from services.inference.engine import RequestHandle, StreamEvent
from services.inference.sampling import SamplingParams


def request_key(prompt: str) -> str:
    """A short, stable name for a request, printed when it is missing from the recording."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


class ReplayTokenizer:
    """Renders chat messages as canonical JSON, so a chat request's prompt *is* its lookup key."""

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        if not messages:
            raise ValueError("no messages")
        return canonical_messages(messages)

    def encode(self, text: str) -> list[int]:
        """Whitespace tokens: the usage counts a recording reports when it did not record the LLM's own."""
        return list(range(len(text.split())))


def canonical_messages(messages: list[dict[str, Any]]) -> str:
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], sort_keys=True)


class ReplayEngine:
    """Answers ``submit_text`` from a recording; the same calls the HTTP and gRPC front ends make on ``Engine``."""

    def __init__(self, recording: Path, record_from: str | None = None, upstream_model: str | None = None) -> None:
        self.recording, self.record_from, self.upstream_model = recording, record_from, upstream_model
        self.tokenizer = ReplayTokenizer()
        self._answers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.served = self.missed = 0
        if recording.exists():
            for number, line in enumerate(recording.read_text().splitlines(), 1):
                if line.strip():
                    self._add(json.loads(line), f"{recording}:{number}")
        elif record_from is None:
            raise FileNotFoundError(f"no recording at {recording} (record one with --record-from URL)")

    def _add(self, entry: dict[str, Any], where: str) -> None:
        if "completion" not in entry or ("messages" in entry) == ("prompt" in entry):
            raise ValueError(f"{where}: a recorded entry needs 'completion' and one of 'messages' or 'prompt'")
        prompt = canonical_messages(entry["messages"]) if "messages" in entry else entry["prompt"]
        self._answers[prompt] = entry

    def __len__(self) -> int:
        return len(self._answers)

    def start(self) -> None:
        return  # nothing runs in the background: answers are looked up on submit

    def stop(self) -> None:
        return

    def stats(self) -> dict[str, float]:
        return {"recorded": float(len(self._answers)), "served": float(self.served), "missed": float(self.missed)}

    def submit_text(self, prompt: str, params: SamplingParams, request_id: str | None = None) -> RequestHandle:
        if not prompt:
            raise ValueError("the prompt is empty")
        with self._lock:
            entry = self._answers.get(prompt)
        if entry is None:
            entry = self._record(prompt)
        with self._lock:
            self.served += 1
        handle = RequestHandle(request_id or uuid.uuid4().hex)
        words = entry["completion"].split(" ")
        completion_tokens = entry.get("completion_tokens", len(entry["completion"].split()))
        limited = completion_tokens > params.max_tokens
        if limited:  # honour max_tokens as a model would: cut the answer, finish_reason "length"
            words = words[: params.max_tokens]
        for i, word in enumerate(words):
            handle.put(StreamEvent(text=word if i == 0 else " " + word, token_ids=()))
        handle.put(
            StreamEvent(
                text="",
                token_ids=(),
                finished=True,
                finish_reason="length" if limited else "stop",
                prompt_tokens=entry.get("prompt_tokens", len(self.tokenizer.encode(prompt))),
                completion_tokens=min(completion_tokens, params.max_tokens),
            )
        )
        return handle

    def _record(self, prompt: str) -> dict[str, Any]:
        """A miss: forward it to the live endpoint when recording, else refuse with the key."""
        with self._lock:
            self.missed += 1
        if self.record_from is None:
            raise ValueError(
                f"no recorded completion for this request (key {request_key(prompt)}) in {self.recording}; "
                "record it with --record-from URL"
            )
        from openai import OpenAI  # only the recording path needs a client

        client = OpenAI(base_url=self.record_from, api_key="unused")
        model = self.upstream_model or client.models.list().data[0].id
        try:
            messages = json.loads(prompt)
        except json.JSONDecodeError:
            messages = None
        reply: Any
        if isinstance(messages, list):
            reply = client.chat.completions.create(model=model, messages=messages, temperature=0)
            entry: dict[str, Any] = {"messages": messages, "completion": reply.choices[0].message.content or ""}
        else:
            reply = client.completions.create(model=model, prompt=prompt, temperature=0)
            entry = {"prompt": prompt, "completion": reply.choices[0].text}
        if reply.usage is not None:  # the LLM's own counts, replayed as they were
            entry |= {"prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens}
        with self._lock:
            self._add(entry, "recorded")
            with self.recording.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        return entry
