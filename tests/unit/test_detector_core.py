"""Steps from GenAI spans, the knowledge base, the contrastive losses and calibration, without the backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from loadtests.simulator.agents import generate_runs, run_to_otlp, run_to_otlp_steps
from services.detector import contrastive
from services.detector.detection import (
    RunScores,
    StepScore,
    Thresholds,
    calibrate,
    diagnose,
    failure_share,
    first_alert,
    score_vector,
)
from services.detector.encoder import FEATURE_DIM, BackboneEncoder, EagerEncoder, structure
from services.detector.knowledge_base import NORMAL, STEP, TRACE, Case, EncoderMismatch, KnowledgeBase, Match
from services.detector.steps import RunEnd, Step, from_proto, from_request, group_runs, to_proto
from services.detector.train import LabelledRun, seed_knowledge_base, sender_index, state_of, train_encoder


def test_spans_become_the_simulated_steps_and_the_root_span_ends_the_run() -> None:
    (sim,) = [r for r in generate_runs("rca", 6, seed=3) if r.failure][:1]
    (run,) = group_runs(from_request(run_to_otlp(sim)))
    assert run.system == "rca" and run.run_id == sim.run_id
    assert [(s.agent, s.operation, s.tool or None, s.received_from) for s in run.steps] == [
        (s.agent, s.operation, s.tool, s.received_from) for s in sim.steps
    ]
    assert all(
        a.output_text == b.output_text and a.input_text == b.input_text
        for a, b in zip(run.steps, sim.steps, strict=True)
    )
    live = [list(from_request(r)) for r in run_to_otlp_steps(sim)]
    assert all(isinstance(items[0], Step) for items in live)
    assert isinstance(live[-1][-1], RunEnd) and not any(isinstance(i, RunEnd) for items in live[:-1] for i in items)
    assert from_proto(to_proto(run.steps[2])) == run.steps[2]


def test_inter_agent_senders_point_at_the_step_whose_output_was_received() -> None:
    (sim,) = generate_runs("code", 1, seed=5, failure_rate=0)
    (run,) = group_runs(from_request(run_to_otlp(sim)))
    senders = sender_index(run.steps)
    assert senders[0] == -1  # the user's task
    for i, j in enumerate(senders):
        if j >= 0:
            step, sender = run.steps[i], run.steps[j]
            assert j < i
            assert sender.agent in (*step.received_from, step.agent) or sender.tool in step.received_from


def test_structure_features_depend_on_who_and_where() -> None:
    a = Step("r", "code", "coder", "chat", 3, received_from=("reviewer",))
    assert not np.array_equal(
        structure(a), structure(Step("r", "code", "tester", "chat", 3, received_from=("reviewer",)))
    )
    assert not np.array_equal(
        structure(a), structure(Step("r", "code", "coder", "chat", 9, received_from=("reviewer",)))
    )


def test_knowledge_base_search_versions_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    kb = KnowledgeBase(path, encoder_version="enc-1")
    vectors = np.eye(4, dtype=np.float32)
    cases = [
        Case("", STEP, "code", "incorrect_code", "coder", 3, "run-a"),
        Case("", STEP, "code", NORMAL, "coder", 2, "run-a"),
        Case("", STEP, "code", "round_limit", "reviewer", 5, "run-b"),
        Case("", TRACE, "code", "incorrect_code", "", -1, "run-a"),
    ]
    stored = kb.add(cases, vectors)
    assert kb.version == 1 and all(c.version == 1 for c in stored)
    query = np.array([0.9, 0.1, 0.3, 0], np.float32)
    assert [m.case.failure_type for m in kb.search(STEP, "code", query, 5)] == ["incorrect_code", "round_limit"]
    assert kb.search(STEP, "code", query, 5, agent="reviewer")[0].case.failure_type == "round_limit"
    assert kb.search(STEP, "code", query, 5, normal=True)[0].case.agent == "coder"
    assert kb.search(STEP, "code", query, 5, exclude_run="run-a")[0].case.run_id == "run-b"
    assert kb.delete(stored[0].id) and kb.version == 2
    assert [m.case.failure_type for m in kb.search(STEP, "code", query, 5)] == ["round_limit"]
    reopened = KnowledgeBase(path, encoder_version="enc-1")
    assert reopened.version == 2 and len(reopened.list(include_normal=True)) == 3
    with pytest.raises(EncoderMismatch):
        KnowledgeBase(path, encoder_version="enc-2")


def test_contrastive_losses_are_finite_and_training_lowers_them() -> None:
    torch.set_num_threads(1)  # tiny tensors: more threads only spin on a shared machine
    torch.manual_seed(0)
    model = EagerEncoder(dim=16, hidden=32)
    features = torch.randn(2, 6, FEATURE_DIM)
    lengths = torch.tensor([6, 4])
    flat = torch.cat([features[0, :6], features[1, :4]])
    agents = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    receivers, senders = torch.tensor([1, 2, 7]), torch.tensor([0, 1, 6])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        a, b = model.steps(flat), model.steps(flat + 0.01 * torch.randn_like(flat))
        padded = torch.zeros(2, 6, 16)
        padded[0], padded[1, :4] = a[:6], a[6:]
        prefixes, _ = model.prefixes(padded)
        loss = contrastive.total_loss(
            contrastive.intra_loss(a, b, agents),
            contrastive.inter_loss(model.inter_head(a), a, receivers, senders),
            contrastive.rank_loss(prefixes, lengths),
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def _scores(knowledge: list[float], deviation: float = 0.1, trace: float = -0.5) -> RunScores:
    return RunScores("r", "code", [StepScore(k, deviation, []) for k in knowledge], StepScore(trace, 0.0, []))


def test_calibration_separates_failure_runs_and_first_alert_is_the_earliest_step() -> None:
    runs = [_scores([-0.2, -0.1, 0.3, 0.1])] * 5 + [_scores([-0.3, -0.15, -0.2])] * 5
    limits = calibrate(runs, [True] * 5 + [False] * 5)
    assert -0.15 <= limits.knowledge < 0.3
    assert first_alert(runs[0], limits)[0] == 2 and first_alert(runs[-1], limits) is None
    assert first_alert(_scores([-0.3], deviation=0.9), Thresholds(0.0, 0.5, 1.0))[1] == "deviation"
    assert first_alert(_scores([-0.3], trace=0.2), Thresholds(0.0, 1.0, 0.1))[0] == -1


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, np.float32)
    return vector / np.linalg.norm(vector)


def test_knowledge_is_the_failure_share_of_the_nearest_cases_not_one_near_duplicate() -> None:
    kb = KnowledgeBase(":memory:", encoder_version="enc")
    # the coder's normal steps sit around e0; three failure cases around e1; one stray failure case near e0
    normals = [_unit(1, 0.05 * i, 0, 0) for i in range(6)]
    failures = [_unit(0.1 * i, 1, 0, 0) for i in range(3)]
    stray = _unit(1, 0, 0.02, 0)
    cases = [Case("", STEP, "code", NORMAL, "coder", i, f"ok-{i}") for i in range(6)]
    cases += [Case("", STEP, "code", "incorrect_code", "coder", 1, f"bad-{i}") for i in range(3)]
    cases += [Case("", STEP, "code", "ignored_feedback", "coder", 5, "stray")]
    kb.add(cases, np.stack([*normals, *failures, stray]))

    near_failures = score_vector(kb, STEP, "code", _unit(0.05, 1, 0.1, 0), "coder")
    assert near_failures.knowledge > 0.9
    assert diagnose(near_failures.matched)[0] == "incorrect_code"
    # the nearest case is a failure, but the normal steps around it outvote it
    near_normal = score_vector(kb, STEP, "code", _unit(1, 0, 0.03, 0), "coder")
    assert near_normal.matched[0].case.run_id == "stray"
    assert near_normal.knowledge < 0.5
    # another agent's cases never vote
    assert score_vector(kb, STEP, "code", _unit(0.05, 1, 0.1, 0), "tester").knowledge == 0.0


def test_failure_share_edge_cases_and_deviation_diagnosis() -> None:
    failure = Match(Case("f", STEP, "code", "round_limit", "reviewer"), 0.9)
    normal = Match(Case("n", STEP, "code", NORMAL, "reviewer"), 0.8)
    assert failure_share([], [normal]) == (0.0, [])
    assert failure_share([failure], []) == (1.0, [failure])
    share, failing = failure_share([failure], [normal])
    assert failing == [failure] and share == pytest.approx(1 / (1 + np.exp(-0.1 / 0.05)))
    # a deviation alert is diagnosed by known failures only when they hold most of the neighbours' vote
    assert StepScore(0.6, 0.5, [failure], normal).deviation_matches == [failure]
    assert StepScore(0.3, 0.5, [failure], normal).deviation_matches == []
    limits = Thresholds(knowledge=0.9, deviation=0.3, trace=1.0)
    run = RunScores("r", "code", [StepScore(0.3, 0.5, [failure], normal)], StepScore(0.0, 0.0, []))
    assert first_alert(run, limits) == (0, "deviation", [])
    run = RunScores("r", "code", [StepScore(0.6, 0.5, [failure], normal)], StepScore(0.0, 0.0, []))
    assert first_alert(run, limits) == (0, "deviation", [failure])


def _labelled_runs(n: int = 8) -> list[LabelledRun]:
    rng = np.random.default_rng(0)
    out = []
    for sim in generate_runs("rca", n, seed=11):
        (run,) = group_runs(from_request(run_to_otlp(sim)))
        failure = sim.failure
        features = rng.standard_normal((len(run.steps), FEATURE_DIM)).astype(np.float32)
        out.append(
            LabelledRun(
                run,
                features,
                failure.failure_type if failure else "",
                failure.agent if failure else "",
                failure.step if failure else -1,
            )
        )
    return out


def test_seed_knowledge_base_files_a_failures_consequences_under_its_type() -> None:
    runs = _labelled_runs()
    failed = next(r for r in runs if r.failure_step >= 0 and r.failure_step < len(r.run.steps) - 1)
    kb = KnowledgeBase(":memory:", encoder_version="minilm-untrained")
    seed_knowledge_base(kb, BackboneEncoder(), runs)
    steps = {
        c.step_index: c for c in kb.list(system="rca", level=STEP, include_normal=True) if c.run_id == failed.run.run_id
    }
    assert len(steps) == len(failed.run.steps)
    for index, case in steps.items():
        expected = failed.failure_type if index >= failed.failure_step else NORMAL
        assert case.failure_type == expected == state_of(failed, failed.run.steps[index])
        assert case.agent == failed.run.steps[index].agent
        assert case.description == (
            f"after {failed.failure_agent}'s step {failed.failure_step}" if index > failed.failure_step else ""
        )
    success = next(r for r in runs if r.failure_step < 0)
    assert all(state_of(success, s) == NORMAL for s in success.run.steps)
    traces = kb.list(system="rca", level=TRACE, include_normal=True)
    assert len(traces) == len(runs) and {c.failure_type for c in traces} == {r.failure_type for r in runs}


def test_supervised_loss_rewards_class_clusters_and_training_uses_it() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2])
    clustered = torch.nn.functional.normalize(torch.eye(3)[labels] + 0.01 * torch.randn(5, 3), dim=-1)
    mixed = torch.nn.functional.normalize(torch.eye(3)[torch.tensor([0, 1, 0, 1, 2])], dim=-1)
    assert contrastive.supervised_loss(clustered, labels) < contrastive.supervised_loss(mixed, labels)
    assert float(contrastive.supervised_loss(clustered, torch.arange(5))) == 0.0  # no positives at all

    runs = _labelled_runs(6)
    _, history = train_encoder(runs, epochs=3, batch_runs=6, log_every=100)
    assert all(np.isfinite(h["sup"]) and h["sup"] > 0 for h in history) and history[-1]["sup"] < history[0]["sup"]
    _, unsupervised = train_encoder(runs, epochs=1, batch_runs=6, log_every=100, supervised_weight=0.0)
    assert unsupervised[0]["sup"] == 0.0


def test_a_knowledge_base_of_another_encoder_is_kept_aside_for_the_new_seed(tmp_path: Path) -> None:
    from services.detector.main import open_knowledge_base

    seed = tmp_path / "seed.sqlite"
    KnowledgeBase(seed, encoder_version="new").add([Case("", STEP, "code", NORMAL, "coder")], np.ones((1, 4)))
    live = tmp_path / "data" / "kb.sqlite"
    first = open_knowledge_base(live, seed, "new")  # a fresh data directory starts from the seed
    assert first.encoder_version == "new" and len(first.list(include_normal=True)) == 1
    old = KnowledgeBase(tmp_path / "old.sqlite", encoder_version="old")
    old.add([Case("", STEP, "code", "ignored_feedback", "coder", source="expert")], np.ones((1, 4)))
    (tmp_path / "old.sqlite").replace(live)
    with pytest.raises(EncoderMismatch):
        KnowledgeBase(live, encoder_version="new")
    upgraded = open_knowledge_base(live, seed, "new")
    assert upgraded.encoder_version == "new" and [c.failure_type for c in upgraded.list(include_normal=True)] == [""]
    kept = KnowledgeBase(tmp_path / "data" / "kb.old.sqlite")
    assert [c.source for c in kept.list()] == ["expert"]
