"""The inference service's front ends with the real clients: tritonclient (gRPC, sync and aio) and openai."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.utils import InferenceServerException

from deploy.kafka.broker import free_port
from services.common.settings import GrpcSettings
from services.inference.main import InferenceSettings, build
from services.inference.shapes import make_random_checkpoint

MODEL = "tiny-llm"
PROMPT = "root cause: cpu hog on the currency service"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    checkpoint = make_random_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / MODEL, max_context=512)
    http_port = free_port()
    settings = InferenceSettings(
        model_path=Path(checkpoint),
        metrics_port=0,
        heartbeat_s=0,
        http_port=http_port,
        max_batch_size=4,
        prefill_chunk=32,
        grpc=GrpcSettings(port=0, shutdown_grace_s=0.5),
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
    yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"http://127.0.0.1:{http_port}", "engine": engine}
    runtime.stop()


def _inputs(prompt: str, sampling: dict | str | None = None, stream: bool | None = None, exclude: bool | None = None):
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs = [text]
    if sampling is not None:
        raw = sampling if isinstance(sampling, str) else json.dumps(sampling)
        tensor = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([raw.encode()], dtype=np.object_))
        inputs.append(tensor)
    for name, value in (("stream", stream), ("exclude_input_in_output", exclude)):
        if value is not None:
            tensor = grpcclient.InferInput(name, [1], "BOOL")
            tensor.set_data_from_numpy(np.array([value], dtype=bool))
            inputs.append(tensor)
    return inputs


GREEDY = {"temperature": 0, "max_tokens": 12, "ignore_eos": True}


def test_tritonclient_metadata_and_config(server: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(server["grpc"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("other")
    assert client.get_server_metadata().name == "faultline-inference"
    metadata = client.get_model_metadata(MODEL)
    assert metadata.inputs[0].name == "text_input"
    assert {o.name for o in metadata.outputs} >= {"text_output", "finish_reason"}
    config = client.get_model_config(MODEL).config
    assert config.model_transaction_policy.decoupled
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("other")


def test_tritonclient_unary_infer(server: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(server["grpc"])
    result = client.infer(MODEL, _inputs(PROMPT, GREEDY))
    text = result.as_numpy("text_output")[0].decode()
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)  # the prompt is prepended by default
    assert result.as_numpy("finish_reason")[0] == b"length"
    assert result.as_numpy("num_output_tokens")[0] == 12
    only_new = client.infer(MODEL, _inputs(PROMPT, GREEDY, exclude=True)).as_numpy("text_output")[0].decode()
    assert PROMPT + only_new == text  # greedy is deterministic


def test_tritonclient_streamed_infer_matches_unary(server: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(server["grpc"])
    expected = client.infer(MODEL, _inputs(PROMPT, GREEDY, exclude=True)).as_numpy("text_output")[0].decode()
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(MODEL, _inputs(PROMPT, GREEDY, stream=True), request_id="s1")
    deltas, final = [], False
    while not final:
        result, error = results.get(timeout=60)
        assert error is None
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        deltas.append(result.as_numpy("text_output")[0].decode())
        assert response.id == "s1"
    client.stop_stream()
    assert len(deltas) > 2 and "".join(deltas) == expected


def test_tritonclient_aio_stream(server: dict[str, str]) -> None:
    async def run() -> str:
        client = aiogrpcclient.InferenceServerClient(server["grpc"])

        async def requests():
            yield {"model_name": MODEL, "inputs": _inputs(PROMPT, GREEDY, stream=True), "request_id": "a1"}

        parts = []
        async for result, error in client.stream_infer(requests()):
            assert error is None
            parts.append(result.as_numpy("text_output")[0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        await client.close()
        return "".join(parts)

    expected = grpcclient.InferenceServerClient(server["grpc"]).infer(MODEL, _inputs(PROMPT, GREEDY, exclude=True))
    assert asyncio.run(run()) == expected.as_numpy("text_output")[0].decode()


@pytest.mark.parametrize(
    ("model", "prompt", "sampling", "reason"),
    [
        ("other", PROMPT, GREEDY, "unknown model"),
        (MODEL, "", GREEDY, "prompt is empty"),
        (MODEL, PROMPT, {"temperature": -1}, "temperature must be"),
        (MODEL, PROMPT, "{not json", "not JSON"),
        (MODEL, PROMPT, {"max_tokens": "many"}, "max_tokens must be a number"),
        (MODEL, PROMPT, {"beam_width": 4}, "unknown sampling parameter"),
        (MODEL, "word " * 600, GREEDY, "context limit"),
        (MODEL, PROMPT, {"attention": {"backend": "magic"}}, "unknown attention backend"),
        (MODEL, PROMPT, {"attention": {"backend": "dense", "budget": 3}}, "bad options for attention backend"),
    ],
)
def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(
    server: dict[str, str], model: str, prompt: str, sampling: dict | str, reason: str
) -> None:
    client = grpcclient.InferenceServerClient(server["grpc"])
    with pytest.raises(InferenceServerException, match=reason) as error:
        client.infer(model, _inputs(prompt, sampling))
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.infer(MODEL, _inputs(PROMPT, GREEDY)).as_numpy("finish_reason")[0] == b"length"


def test_malformed_tensor_is_rejected(server: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(server["grpc"])
    wrong = grpcclient.InferInput("text_input", [2], "BYTES")
    wrong.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
    wrong._raw_content = b"\x09\x00\x00\x00ab"  # claims 9 bytes, holds 2
    with pytest.raises(InferenceServerException, match="malformed BYTES tensor"):
        client.infer(MODEL, [wrong])


def test_concurrent_requests_are_batched_and_agree_with_single_runs(server: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(server["grpc"])
    prompts = [f"{PROMPT} #{i}" * (1 + i % 3) for i in range(6)]
    single = [client.infer(MODEL, _inputs(p, GREEDY, exclude=True)).as_numpy("text_output")[0] for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(
            pool.map(
                lambda p: client.infer(MODEL, _inputs(p, GREEDY, exclude=True)).as_numpy("text_output")[0], prompts
            )
        )
    assert together == single
    assert server["engine"].stats()["peak_batch"] > 1  # they did share steps


def test_openai_client_completions_chat_and_streaming(server: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=server["http"] + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [MODEL]
    completion = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    triton = grpcclient.InferenceServerClient(server["grpc"])
    expected = triton.infer(MODEL, _inputs(PROMPT, {"temperature": 0, "max_tokens": 12}, exclude=True))
    assert completion.choices[0].text == expected.as_numpy("text_output")[0].decode()
    assert completion.usage.completion_tokens <= 12 and completion.usage.prompt_tokens > 5
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "what failed?"}], max_tokens=8, temperature=0.7, seed=3
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    again = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "what failed?"}], max_tokens=8, temperature=0.7, seed=3
    )
    assert again.choices[0].message.content == chat.choices[0].message.content  # seeded sampling repeats
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "what failed?"}],
        max_tokens=8,
        temperature=0.7,
        seed=3,
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_openai_errors(server: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=server["http"] + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="prompt is empty"):
        client.completions.create(model=MODEL, prompt="")
    with pytest.raises(openai.BadRequestError, match="context limit"):
        client.completions.create(model=MODEL, prompt="word " * 600)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model=MODEL, prompt=PROMPT, temperature=7)
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).choices[0].finish_reason


def test_health_and_metrics(server: dict[str, str]) -> None:
    assert httpx.get(server["http"] + "/health").json() == {"status": "ok"}
    metrics = httpx.get(server["http"] + "/metrics").text
    for name in (
        "faultline_inference_generated_tokens_total",
        "faultline_inference_time_to_first_token_seconds",
        "faultline_inference_queue_length",
        "faultline_inference_kv_cache_bytes",
        "faultline_inference_kv_cache_dense_equivalent_bytes",
    ):
        assert name in metrics


def test_certified_topk_answers_carry_their_tv_distance(server: dict) -> None:
    budget = 0.05
    sampling = {**GREEDY, "attention": {"backend": "topk_certified", "tv_budget": budget}}
    result = grpcclient.InferenceServerClient(server["grpc"]).infer(MODEL, _inputs(PROMPT, sampling))
    tv_max = float(result.as_numpy("tv_distance_max")[0])
    assert 0 <= float(result.as_numpy("tv_distance_mean")[0]) <= tv_max <= budget  # never above the budget
    plain = grpcclient.InferenceServerClient(server["grpc"]).infer(MODEL, _inputs(PROMPT, GREEDY))
    assert plain.as_numpy("tv_distance_max") is None  # dense attention is exact: nothing to certify
    client = openai.OpenAI(base_url=server["http"] + "/v1", api_key="unused")
    completion = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=4,
        temperature=0,
        extra_body={"attention": {"backend": "topk_certified", "tv_budget": budget, "mode": "search"}},
    )
    measured = completion.model_extra["faultline"]["attention"]
    assert measured["tv_max"] <= budget and 0 < measured["keys_scored_fraction"] <= 1
