"""Grounding features: token-level checks of a step's output against its input and the agent's earlier output."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from services.detector.detection import (
    DISABLED,
    Detector,
    RunScores,
    StepScore,
    Thresholds,
    first_alert,
    grounding_block,
)
from services.detector.encoder import (
    FEATURE_DIM,
    GROUNDING_WEIGHT,
    TEXT_DIM,
    Backbone,
    BackboneEncoder,
    structure,
)
from services.detector.grounding import (
    GROUNDING_DIM,
    Envelope,
    content_words,
    coverage,
    focus,
    grounding,
    vocabulary_names,
)
from services.detector.knowledge_base import KnowledgeBase
from services.detector.runs import RunStore
from services.detector.steps import Run, Step
from services.detector.train import LabelledRun, fit_envelopes, held_out_ungrounded

VOCABULARY = {"the", "incident", "is", "caused", "by", "root", "cause", "service", "logs", "metrics", "agree", "on"}
is_name = vocabulary_names(VOCABULARY)
REQUEST = "Add pagination.\nAcceptance criteria:\n- number pages from 1\n- reject a `page_size` above 100\n"


def _step(agent: str, received: str, produced: str, index: int = 0) -> Step:
    return Step("run", "code", agent, "invoke_agent", index, received, produced)


def test_coverage_finds_a_requirement_left_out_or_changed() -> None:
    whole = "Plan:\n1. Number pages from 1.\n2. Reject a `page_size` above 100.\n3. Add type hints."
    assert coverage(REQUEST, whole) == (1.0, 1.0)
    dropped = "Plan:\n1. Number pages from 1.\n2. Add type hints."
    assert coverage(REQUEST, dropped)[0] < 0.5
    # a changed number is a changed requirement; the list's own numbering does not count as saying "1"
    assert coverage(REQUEST, whole.replace("from 1", "from 0"))[0] < 1.0
    assert "1" not in content_words("1. Add type hints.")
    assert coverage("no list here", "anything") == (1.0, 1.0)


def test_focus_is_the_most_mentioned_name() -> None:
    top, names = focus("cartservice is slow; cartservice logs agree; redis-cart is fine", is_name)
    assert top == "cartservice" and names["redis-cart"] == 1
    assert focus("the incident is caused by the root cause", is_name) == (None, {})


def test_a_report_naming_another_service_than_its_input_is_off_focus() -> None:
    received = "Metrics and logs agree on paymentservice. paymentservice logs: reset by peer (checkoutservice)."
    right = grounding(_step("reporter", received, "Root cause service: paymentservice"), [], is_name)
    wrong = grounding(_step("reporter", received, "Root cause service: checkoutservice"), [], is_name)
    assert right.shape == (GROUNDING_DIM,)
    assert right[3] == 1.0 and wrong[3] == 0.0  # on_focus
    assert wrong[2] < right[2]  # the named service's share of the input's names


def test_a_revision_that_changes_nothing_is_flagged() -> None:
    code = "```python\nimport time\n\ndef f() -> float:\n    return time.time()\n```"
    first = _step("coder", "plan", f"Here it is.\n{code}", 0)
    asked = "Please add a docstring."
    unchanged = grounding(_step("coder", asked, f"Done: added the docstring.\n{code}", 2), [first], is_name)
    changed_code = code.replace("def f", '"""Clock."""\ndef f')
    changed = grounding(_step("coder", asked, f"Done.\n{changed_code}", 2), [first], is_name)
    assert unchanged[4] == 1.0 and unchanged[5] == 1.0  # revised, unchanged
    assert changed[4] == 1.0 and changed[5] == 0.0 and changed[6] > 0
    # another agent's artefact is not this agent's earlier output
    other = grounding(_step("reviewer", asked, f"Looks good.\n{code}", 2), [first], is_name)
    assert other[4] == 0.0


def test_envelope_measures_the_distance_outside_the_normal_range() -> None:
    envelope = Envelope.fit(np.array([[1.0, 0.0], [1.0, 0.2]]))
    assert envelope.outside(np.array([1.0, 0.1])) == 0.0
    assert envelope.outside(np.array([0.5, 0.5])) == 0.5 + 0.3
    assert Envelope.from_dict(envelope.as_dict()).outside(np.array([0.5, 0.1])) == 0.5


def test_thresholds_round_trip_and_a_grounding_alert_comes_before_a_deviation_one() -> None:
    envelopes = {"planner": Envelope(np.ones(GROUNDING_DIM, np.float32), np.ones(GROUNDING_DIM, np.float32))}
    limits = Thresholds(0.9, 0.3, 1.0, 0.1, envelopes)
    again = Thresholds.from_dict(limits.as_dict())
    assert again.grounding == 0.1 and set(again.envelopes) == {"planner"}
    assert Thresholds.from_dict({"knowledge": 0.5, "deviation": 1.0, "trace": 0.5}).grounding == DISABLED
    scores = RunScores(
        "r",
        "code",
        [StepScore(0.1, 0.0, [], ungrounded=0.05), StepScore(0.1, 0.5, [], ungrounded=0.2)],
        StepScore(0, 0, []),
    )
    assert first_alert(scores, limits) == (1, "grounding", [])
    assert first_alert(scores, Thresholds(0.9, 0.3, 1.0)) == (1, "deviation", [])


def _features(steps: list[Step], value: float) -> np.ndarray:
    """Step features whose grounding block is ``value`` everywhere, with the steps' real hand-off one-hots."""
    features = np.stack(
        [np.concatenate([np.zeros(3 * TEXT_DIM), structure(s), np.zeros(GROUNDING_DIM)]) for s in steps]
    )
    features[:, -GROUNDING_DIM:] = GROUNDING_WEIGHT * value
    return features.astype(np.float32)


def test_held_out_ranges_come_from_the_other_seeds_runs() -> None:
    def run(run_id: str, seed: int, value: float) -> LabelledRun:
        steps = [_step("planner", "", "")]
        return LabelledRun(Run(run_id, "code", steps), _features(steps, value), "", "", -1, seed)

    runs = [run("a", 1, 1.0), run("b", 1, 1.0), run("c", 2, 0.5)]
    assert fit_envelopes(runs)["planner"].low[0] == 0.5
    held = held_out_ungrounded(runs)
    # "c" is measured against seed 1's range (all 1.0) and seed 1's runs against "c" alone
    assert held["c"][0] == GROUNDING_DIM * 0.5 and held["a"][0] == held["b"][0] == GROUNDING_DIM * 0.5


def test_a_hand_off_no_normal_step_of_the_agent_had_is_outside_its_range() -> None:
    reviewed = [
        Step("r", "code", "reviewer", "invoke_agent", 3, "code and tests", "LGTM", received_from=("coder", "tester"))
    ]
    normal = fit_envelopes([LabelledRun(Run("r", "code", reviewed), _features(reviewed, 1.0), "", "", -1, 1)])
    untested = [replace(reviewed[0], received_from=("coder",))]
    limits = Thresholds(envelopes=normal)
    assert limits.ungrounded("reviewer", _features(reviewed, 1.0)[0]) == 0.0
    assert limits.ungrounded("reviewer", _features(untested, 1.0)[0]) == 1.0  # no test report in front of it
    assert limits.ungrounded("planner", _features(untested, 0.0)[0]) == 0.0  # no normal range: no verdict


def test_the_detector_grounds_a_step_in_the_runs_earlier_steps() -> None:
    checked = grounding_block(np.zeros(FEATURE_DIM)).shape[0]
    high = np.ones(checked, np.float32)
    high[5] = 0.0  # no normal coder step resubmits its artefact unchanged
    limits = Thresholds(DISABLED, DISABLED, DISABLED, 0.5, {"coder": Envelope(np.zeros(checked, np.float32), high)})
    detector = Detector(BackboneEncoder(), Backbone(None, threads=1), KnowledgeBase(":memory:"), {"code": limits})
    code = "```python\ndef f() -> int:\n    return 1\n```"
    first = detector.observe(_step("coder", "plan", f"Here.\n{code}", 0))
    again = detector.observe(_step("coder", "Please add a docstring.", f"Done, added.\n{code}", 1))
    assert first.alert is None and first.score.ungrounded == 0.0
    assert again.score.ungrounded == 1.0  # the unchanged revision, outside the coder's normal range
    assert again.alert is not None and again.alert.step_index == 1 and again.alert.ungrounded == 1.0


def test_runs_of_one_seed_are_held_out_by_folds() -> None:
    steps = [_step("planner", "", "")]
    runs = [LabelledRun(Run(f"r{i}", "code", steps), _features(steps, 1.0 - 0.1 * i), "", "", -1, 7) for i in range(6)]
    held = held_out_ungrounded(runs)
    # run 5 (0.5) is in the fold of run 2 (0.8): the other folds' ranges reach down to 0.6
    assert held["r5"][0] > 0.0 and np.isclose(held["r5"][0], GROUNDING_DIM * 0.1)


def test_a_restarted_detector_goes_on_with_an_open_run_and_alerts_once(tmp_path: Path) -> None:
    normal = np.zeros(grounding_block(np.zeros(FEATURE_DIM)).shape[0], np.float32)
    high = np.ones_like(normal)
    high[5] = 0.0  # no normal coder step resubmits its artefact unchanged
    limits = {"code": Thresholds(DISABLED, DISABLED, DISABLED, 0.5, {"coder": Envelope(normal, high)})}
    backbone, kb = Backbone(None, threads=1), KnowledgeBase(":memory:")
    code = "```python\ndef f() -> int:\n    return 1\n```"
    first = _step("coder", "plan", f"Here.\n{code}", 0)
    again = _step("coder", "Please add a docstring.", f"Done, added.\n{code}", 1)
    later = _step("coder", "Still missing.", f"Done.\n{code}", 2)

    before = Detector(BackboneEncoder(), backbone, kb, limits, RunStore(tmp_path / "runs.sqlite", keep=10))
    assert before.observe(first).alert is None
    # restarted: the earlier step comes from the store, so the unchanged revision is seen as one
    after = Detector(BackboneEncoder(), backbone, kb, limits, RunStore(tmp_path / "runs.sqlite", keep=10))
    raised = after.observe(again).alert
    assert raised is not None and raised.step_index == 1 and after.run_steps("run") == [first, again]
    # restarted again, the alerting step redelivered: the same alert (same id), the step not counted twice
    third = Detector(BackboneEncoder(), backbone, kb, limits, RunStore(tmp_path / "runs.sqlite", keep=10))
    redelivered = third.observe(again).alert
    assert redelivered is not None and redelivered.id == raised.id
    assert third.run_steps("run") == [first, again]
    assert third.observe(later).alert is None  # one step alert per run
    third.end_run("run")
    assert RunStore(tmp_path / "runs.sqlite", keep=10).load("run") == ([], 1, True)  # steps let go, end kept


def test_a_step_arriving_after_its_runs_end_does_not_start_the_run_over(tmp_path: Path) -> None:
    normal = np.zeros(grounding_block(np.zeros(FEATURE_DIM)).shape[0], np.float32)
    high = np.ones_like(normal)
    high[5] = 0.0
    limits = {"code": Thresholds(DISABLED, DISABLED, DISABLED, 0.5, {"coder": Envelope(normal, high)})}
    code = "```python\ndef f() -> int:\n    return 1\n```"
    first = _step("coder", "plan", f"Here.\n{code}", 0)
    late = _step("coder", "Please add a docstring.", f"Done, added.\n{code}", 1)
    store = RunStore(tmp_path / "runs.sqlite", keep=10)
    detector = Detector(BackboneEncoder(), Backbone(None, threads=1), KnowledgeBase(":memory:"), limits, store)
    detector.observe(first)
    assert detector.end_run("run") is None
    # from another partition, after the root span: no alert, and no run of one step left behind
    verdict = detector.observe(late)
    assert verdict.alert is None and detector.run_steps("run") == []
    assert store.load("run") == ([], -1, True)
