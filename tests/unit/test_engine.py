"""Engine behaviour the front-end tests do not pin down: stop strings, cancellation, seeded sampling."""

from __future__ import annotations

import time

import pytest

from services.inference.engine import Engine, EngineSettings
from services.inference.sampling import SamplingParams
from services.inference.shapes import make_random_checkpoint
from services.inference.tokenizer import Tokenizer
from services.inference.weights import load_model


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = make_random_checkpoint("tiny", tmp_path_factory.mktemp("m") / "tiny", max_context=2048)
    engine = Engine(load_model(path), Tokenizer(path), EngineSettings(max_batch_size=4, prefill_chunk=16))
    engine.start()
    yield engine
    engine.stop()


PROMPT = "the service cartservice is slow because"


def test_stop_strings_cut_the_text_and_finish_with_stop(engine: Engine) -> None:
    free, _ = engine.submit_text(PROMPT, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)).result()
    stop = free[5:8]  # a string the greedy continuation is known to contain
    text, final = engine.submit_text(
        PROMPT, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=(stop,))
    ).result()
    assert final.finish_reason == "stop" and text == free[: free.index(stop)]


def test_cancel_stops_generation_early(engine: Engine) -> None:
    handle = engine.submit_text(PROMPT, SamplingParams(max_tokens=100_000, temperature=0, ignore_eos=True))
    first = next(iter(handle))
    handle.cancel()
    events = list(handle)
    final = events[-1] if events else first
    assert final.finished and final.finish_reason == "cancelled"
    assert final.completion_tokens < 2000


def test_seeds_repeat_and_differ(engine: Engine) -> None:
    def sample(seed: int) -> str:
        return engine.submit_text(PROMPT, SamplingParams(max_tokens=12, temperature=1.0, seed=seed)).result()[0]

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(4)}) > 1


def test_invalid_sampling_values_are_rejected_before_queueing() -> None:
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0).validate()
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        SamplingParams.from_dict({"n_best": 3})


def test_requests_join_a_running_batch(engine: Engine) -> None:
    long = engine.submit_text(PROMPT, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True))
    time.sleep(0.05)
    short = engine.submit_text(PROMPT, SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    short_text, short_final = short.result()
    assert short_final.completion_tokens == 3
    long_text, _ = long.result()
    assert long_text.startswith(short_text)  # same greedy path, whichever batch it ran in
