"""Incident hysteresis on synthetic StateEmbedding sequences."""

from __future__ import annotations

from services.common.pb.faultline.v1 import detector_pb2, embedding_pb2
from services.detector.incidents import OPEN, RESOLVED, IncidentPolicy, IncidentTracker

_S = 1_000_000_000


def state(system: str, i: int, score: float, suspect: str = "cartservice") -> embedding_pb2.StateEmbedding:
    message = embedding_pb2.StateEmbedding(system=system, anomaly_score=score, anomalous=score >= 0.5)
    message.window.start.FromNanoseconds(i * 10 * _S)
    message.window.end.FromNanoseconds((i + 1) * 10 * _S)
    if score >= 0.5:
        message.root_cause_services.add(service=suspect, score=0.8)
        message.failure_type = "cpu"
        message.evidence.add(modality="metrics", service=suspect, name="cpu", value=score, baseline=0.1, score=5)
    return message


def feed(tracker: IncidentTracker, system: str, scores: list[float]) -> list[detector_pb2.Incident]:
    return [i for n, s in enumerate(scores) if (i := tracker.observe(state(system, n, s))) is not None]


def test_opens_after_consecutive_anomalies_and_resolves_after_normal_windows() -> None:
    tracker = IncidentTracker(IncidentPolicy(threshold=0.5, open_after=2, resolve_after=3))
    events = feed(tracker, "boutique", [0.1, 0.7, 0.2, 0.8, 0.9, 0.95, 0.3, 0.2, 0.1, 0.1])
    assert [e.status for e in events] == [OPEN, RESOLVED]
    opened, resolved = events
    assert opened.id == resolved.id
    assert opened.opened_at.ToNanoseconds() == 3 * 10 * _S  # the single spike at window 1 did not open one
    assert resolved.peak_anomaly_score == 0.95 and resolved.anomalous_windows == 3
    assert resolved.resolved_at.ToNanoseconds() == 8 * 10 * _S  # the third normal window
    assert resolved.suspected_services[0].service == "cartservice" and resolved.failure_type == "cpu"
    assert resolved.window.end.ToNanoseconds() == 6 * 10 * _S
    assert tracker.get(opened.id).status == RESOLVED


def test_one_open_incident_per_system_and_systems_are_independent() -> None:
    tracker = IncidentTracker(IncidentPolicy(open_after=2, resolve_after=2))
    events = feed(tracker, "a", [0.9] * 6 + [0.1, 0.9, 0.1, 0.1])  # a normal blip inside does not split it
    events += feed(tracker, "b", [0.9, 0.9])
    assert [(e.system, e.status) for e in events] == [("a", OPEN), ("a", RESOLVED), ("b", OPEN)]
    assert len(tracker.list(status=OPEN)) == 1


def test_replayed_or_out_of_order_windows_change_nothing() -> None:
    tracker = IncidentTracker(IncidentPolicy(open_after=2))
    assert tracker.observe(state("a", 5, 0.9)) is None
    assert tracker.observe(state("a", 5, 0.9)) is None  # the same window again
    assert tracker.observe(state("a", 4, 0.9)) is None  # an older one
    assert tracker.observe(state("a", 6, 0.9)).status == OPEN


def test_a_restarted_tracker_goes_on_where_the_last_one_saved(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "incidents.sqlite"
    first = IncidentTracker(IncidentPolicy(open_after=2, resolve_after=2), path)
    [opened] = [i for n in range(4) if (i := first.observe(state("a", n, [0.1, 0.9, 0.9, 0.9][n])))]
    first.save()
    first.close()  # a crash after the save: the fault's windows are still coming
    second = IncidentTracker(IncidentPolicy(open_after=2, resolve_after=2), path)
    assert second.get(opened.id).status == OPEN
    assert second.observe(state("a", 3, 0.9)) is None  # a replayed window: already seen
    events = [i for n in range(4, 8) if (i := second.observe(state("a", n, [0.9, 0.9, 0.1, 0.1][n - 4])))]
    assert [(e.id, e.status) for e in events] == [(opened.id, RESOLVED)]  # no second incident for the fault
    assert events[0].anomalous_windows == 5


def test_a_window_replayed_after_a_crash_before_the_save_opens_the_same_incident(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "incidents.sqlite"
    first = IncidentTracker(IncidentPolicy(open_after=2), path)
    assert first.observe(state("a", 0, 0.9)) is None
    first.save()
    published = first.observe(state("a", 1, 0.9))  # opened and published, then killed before saving
    first.close()
    again = IncidentTracker(IncidentPolicy(open_after=2), path).observe(state("a", 1, 0.9))
    assert published is not None and again is not None and again.id == published.id
