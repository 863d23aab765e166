"""``faultline eval incidents``: from the tracker's output to detection delays and false incidents (no models)."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from services.common.pb.faultline.v1 import embedding_pb2
from services.detector.incident_eval import (
    FaultOutcome,
    NormalOutcome,
    fault_figures,
    fault_outcome,
    normal_figures,
    normal_outcome,
    per_kind,
    track,
)
from services.detector.incidents import IncidentPolicy

HEAD_THRESHOLD = 0.33  # the embedding service marks a window anomalous at its head's threshold, below the policy's


def window(i: int, score: float, suspect: str = "cartservice") -> embedding_pb2.StateEmbedding:
    """Window i of a 30 s window / 15 s stride stream, as the embedding service publishes it."""
    state = embedding_pb2.StateEmbedding(system="online-boutique", anomaly_score=score)
    state.window.start.FromSeconds(15 * i)
    state.window.end.FromSeconds(15 * i + 30)
    if score >= HEAD_THRESHOLD:
        state.anomalous = True
        state.failure_type = "cpu"
        state.root_cause_services.add(service=suspect, score=0.8)
    return state


def stream(spikes: dict[int, float], fault: range, length: int = 24) -> list[embedding_pb2.StateEmbedding]:
    """Normal windows (0.05), noise spikes blaming emailservice, and the fault's windows blaming cartservice."""
    return [
        window(i, 0.9) if i in fault else window(i, spikes.get(i, 0.05), suspect="emailservice") for i in range(length)
    ]


FAULT_START, FAULT_END = 100.5, 220.5  # window 6 ([90, 120]) is the first the fault reaches


def policy(open_after: int) -> IncidentPolicy:
    return replace(IncidentPolicy(), open_after=open_after)


@pytest.mark.parametrize("open_after, delay", [(1, 19.5), (2, 34.5), (3, 49.5)])
def test_delay_runs_from_fault_start_to_the_end_of_the_window_that_opened_the_incident(
    open_after: int, delay: float
) -> None:
    states = stream({}, range(6, 15))
    outcome = fault_outcome(track(states, policy(open_after)), FAULT_START, FAULT_END)
    assert outcome == FaultOutcome(delay, 0, "cartservice", "cartservice", "cpu")


def test_a_below_policy_threshold_window_the_service_marked_anomalous_counts() -> None:
    states = stream({}, range(6, 15))
    states[6].anomaly_score = 0.4  # under the policy's 0.5, over the head's threshold: still anomalous
    assert fault_outcome(track(states, policy(1)), FAULT_START, FAULT_END).delay_s == 19.5


def test_a_lead_in_spike_is_a_false_incident_and_the_fault_still_gets_its_own() -> None:
    states = stream({1: 0.6}, range(6, 15))
    single = fault_outcome(track(states, policy(1)), FAULT_START, FAULT_END)
    assert single.lead_in_incidents == 1 and single.delay_s == 19.5  # the spike's incident resolved at window 4
    assert fault_outcome(track(states, policy(2)), FAULT_START, FAULT_END).lead_in_incidents == 0


def test_an_incident_still_open_when_the_fault_starts_absorbs_it_and_the_fault_is_missed() -> None:
    states = stream({3: 0.6, 5: 0.6}, range(6, 15))
    outcome = fault_outcome(track(states, policy(1)), FAULT_START, FAULT_END)
    assert outcome == FaultOutcome(None, 1, "", "", "")


def test_a_fault_that_never_scores_is_missed() -> None:
    assert fault_outcome(track(stream({}, range(0)), policy(1)), FAULT_START, FAULT_END).delay_s is None


def test_normal_stretch_splits_incidents_at_the_settled_baseline() -> None:
    states = stream({2: 0.7, 30: 0.7}, range(0), length=40)
    outcome = normal_outcome(track(states, policy(1)), states, settle_s=330.0)
    # window 2 ends at 60 s (settling), window 30 at 480 s; windows 21..39 end after 330 s
    assert outcome == NormalOutcome(settling_incidents=1, steady_incidents=1, steady_windows=19)
    assert normal_outcome(track(states, policy(2)), states, settle_s=330.0).steady_incidents == 0
    figures = normal_figures([outcome, NormalOutcome(0, 0, 21)], stride_s=15.0)
    assert figures["false_incidents_per_hour"] == pytest.approx(1 / (40 * 15 / 3600))
    assert figures["settling_false_incidents_per_start"] == 0.5


def test_fault_figures_over_detected_faults() -> None:
    def record(kind: str, delay: float | None, top: str) -> dict:
        outcome = FaultOutcome(delay, 0, top, top, kind if delay is not None else "")
        return {"kind": kind, "service": "cartservice", "outcomes": {2: asdict(outcome)}}

    faults = [
        record("cpu", 10.0, "cartservice"),
        record("cpu", 20.0, "cartservice"),
        record("delay", 30.0, "frontend"),
        record("delay", None, ""),
    ]
    figures = fault_figures(faults, 2)
    assert figures["faults_detected"] == 3 and figures["faults"] == 4
    assert figures["fault_to_incident"] == {"median_s": 20.0, "p90_s": pytest.approx(28.0)}
    assert figures["top_suspect_is_faulted_at_open"] == pytest.approx(2 / 3)
    assert figures["failure_type_right_final"] == 1.0
    assert per_kind(faults, 2)["delay"] == {"faults": 2, "detected": 1, "median_s": 30.0, "p90_s": 30.0}
