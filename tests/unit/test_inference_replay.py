"""The replay backend behind the real front ends: openai and tritonclient get recorded answers, misses
are clear client errors, and a recording made through --record-from replays the same answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deploy.kafka.broker import free_port
from services.common.settings import GrpcSettings
from services.inference.main import InferenceSettings, build

DIAGNOSIS = [
    {"role": "system", "content": "You localise root causes. Answer in JSON."},
    {"role": "user", "content": "span checkout -> payment: 5012 ms, error; payment CPU 97% (+6 sigma)"},
]
ANSWER = '{"root_cause": "paymentservice", "fault": "cpu", "confidence": 0.9}'


@contextmanager
def _serving(recording: Path, record_from: str | None = None, token: str | None = None) -> Iterator[dict]:
    http_port = free_port()
    settings = InferenceSettings(
        replay_path=recording,
        record_from=record_from,
        metrics_port=0,
        heartbeat_s=0,
        http_port=http_port,
        grpc=GrpcSettings(port=0, shutdown_grace_s=0.5, auth_token=token),
    )
    runtime, engine = build(settings)
    grpc_port = runtime.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield {"http": f"http://127.0.0.1:{http_port}/v1", "grpc": f"127.0.0.1:{grpc_port}", "engine": engine}
    finally:
        runtime.stop()


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "llm.jsonl"
    entries = [
        {"messages": DIAGNOSIS, "completion": ANSWER, "prompt_tokens": 41, "completion_tokens": 17},
        {"prompt": "summarise: disk full on node-3", "completion": "node-3 ran out of disk space"},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_openai_chat_gets_the_recorded_answer_with_its_usage(recording: Path) -> None:
    with _serving(recording) as server:
        client = openai.OpenAI(base_url=server["http"], api_key="unused")
        reply = client.chat.completions.create(model="replay", messages=DIAGNOSIS, temperature=0)
        assert reply.choices[0].message.content == ANSWER
        assert reply.choices[0].finish_reason == "stop"
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (41, 17)
        streamed = client.chat.completions.create(model="replay", messages=DIAGNOSIS, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == ANSWER
        text = client.completions.create(model="replay", prompt="summarise: disk full on node-3")
        assert text.choices[0].text == "node-3 ran out of disk space"


def test_a_request_never_recorded_is_a_client_error_naming_its_key(recording: Path) -> None:
    with _serving(recording) as server:
        client = openai.OpenAI(base_url=server["http"], api_key="unused")
        with pytest.raises(openai.BadRequestError, match="no recorded completion for this request"):
            client.chat.completions.create(model="replay", messages=[{"role": "user", "content": "unrecorded"}])
        # The server is unharmed: the next recorded request is answered.
        reply = client.chat.completions.create(model="replay", messages=DIAGNOSIS)
        assert reply.choices[0].message.content == ANSWER
        assert server["engine"].stats()["missed"] == 1


def test_max_tokens_cuts_a_recorded_answer_as_a_model_would(recording: Path) -> None:
    with _serving(recording) as server:
        client = openai.OpenAI(base_url=server["http"], api_key="unused")
        reply = client.completions.create(model="replay", prompt="summarise: disk full on node-3", max_tokens=2)
        assert (reply.choices[0].text, reply.choices[0].finish_reason) == ("node-3 ran", "length")


def test_tritonclient_gets_the_recorded_answer_over_kserve_v2(recording: Path) -> None:
    with _serving(recording) as server:
        client = grpcclient.InferenceServerClient(server["grpc"])
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"summarise: disk full on node-3"], dtype=np.object_))
        result = client.infer("replay", [text])
        assert result.as_numpy("text_output")[0].decode().endswith("node-3 ran out of disk space")


def test_recording_from_a_live_endpoint_then_replaying_it(recording: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.jsonl"
    # The "live LLM" is another replay server: the recorder cannot tell, and the answer must survive the trip.
    with _serving(recording) as upstream, _serving(new, record_from=upstream["http"]) as recorder:
        client = openai.OpenAI(base_url=recorder["http"], api_key="unused")
        assert client.chat.completions.create(model="replay", messages=DIAGNOSIS).choices[0].message.content == ANSWER
    assert len(new.read_text().splitlines()) == 1
    with _serving(new) as replayed:
        client = openai.OpenAI(base_url=replayed["http"], api_key="unused")
        reply = client.chat.completions.create(model="replay", messages=DIAGNOSIS)
        assert reply.choices[0].message.content == ANSWER
        assert reply.usage.completion_tokens == 17


def test_a_malformed_recording_is_refused_at_start_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": DIAGNOSIS}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: a recorded entry needs 'completion'"):
        build(InferenceSettings(replay_path=path, metrics_port=0, heartbeat_s=0))


def test_with_a_token_both_front_ends_need_it_and_health_stays_open(recording: Path) -> None:
    with _serving(recording, token="s3cret") as server:
        with pytest.raises(openai.AuthenticationError, match="missing or invalid bearer token"):
            openai.OpenAI(base_url=server["http"], api_key="wrong").chat.completions.create(
                model="replay", messages=DIAGNOSIS
            )
        reply = openai.OpenAI(base_url=server["http"], api_key="s3cret").chat.completions.create(
            model="replay", messages=DIAGNOSIS
        )
        assert reply.choices[0].message.content == ANSWER
        assert httpx.get(server["http"].removesuffix("/v1") + "/health").status_code == 200  # probes
        assert httpx.get(server["http"] + "/models").status_code == 401
        client = grpcclient.InferenceServerClient(server["grpc"])
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"summarise: disk full on node-3"], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.infer("replay", [text])
        result = client.infer("replay", [text], headers={"authorization": "Bearer s3cret"})
        assert result.as_numpy("text_output")[0].decode().endswith("node-3 ran out of disk space")
