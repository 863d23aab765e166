"""RuntimeSlicer's front end: windows and watermark, late data, Drain3 templates, baseline and views."""

from __future__ import annotations

import numpy as np
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services.common.otlp import to_key_values
from services.embedding.baseline import Baseline, deviations
from services.embedding.ingest import Slicer, TemplateBook
from services.embedding.views import describe, render
from services.embedding.windows import FEATURES, WindowConfig

S = 1_000_000_000


def spans(
    service: str, times_s: list[float], duration_s: float = 0.01, error: bool = False
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    group = request.resource_spans.add()
    group.resource.attributes.extend(to_key_values({"service.name": service, "service.namespace": "shop"}))
    scoped = group.scope_spans.add()
    for i, t in enumerate(times_s):
        span = scoped.spans.add(
            span_id=(i + 1).to_bytes(8, "big"),
            name="op",
            start_time_unix_nano=int(t * S),
            end_time_unix_nano=int((t + duration_s) * S),
        )
        if error:
            span.status.code = 2
            span.status.message = "deadline exceeded calling db/Query"
    return request


def metric(service: str, name: str, t: float, value: float) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    group = request.resource_metrics.add()
    group.resource.attributes.extend(to_key_values({"service.name": service, "service.namespace": "shop"}))
    m = group.scope_metrics.add().metrics.add(name=name)
    m.gauge.data_points.add(time_unix_nano=int(t * S), as_double=value)
    return request


def logs(service: str, t: float, bodies: list[str]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    group = request.resource_logs.add()
    group.resource.attributes.extend(to_key_values({"service.name": service, "service.namespace": "shop"}))
    scoped = group.scope_logs.add()
    for body in bodies:
        record = scoped.log_records.add(time_unix_nano=int(t * S), severity_text="ERROR")
        record.body.string_value = body
    return request


def test_window_config_rejects_a_stride_that_does_not_divide_the_window() -> None:
    with pytest.raises(ValueError, match="multiple"):
        WindowConfig(window_s=30, stride_s=20)


def test_windows_close_only_when_the_watermark_passes_their_end() -> None:
    slicer = Slicer(WindowConfig(window_s=20, stride_s=10, lateness_s=5, modalities=("spans",)))
    slicer.add_spans(spans("cart", [100.0, 105.0, 112.0]))
    assert slicer.ready() == []  # watermark 107: the window [100, 120) is still open
    slicer.add_spans(spans("cart", [126.0]))  # watermark 121
    [window] = slicer.ready()
    assert (window.start_s, window.end_s, window.system) == (100.0, 120.0, "shop")
    assert window.spans == 3
    assert window.services["cart"].features["spans"] == 3
    slicer.add_spans(spans("cart", [131.0]))  # watermark 126: [110, 130) is still open
    assert slicer.ready() == []
    slicer.add_spans(spans("cart", [136.0]))  # watermark 131: [110, 130) closes, holding 112 and 126
    [second] = slicer.ready()
    assert (second.start_s, second.spans) == (110.0, 2)


def test_late_data_is_dropped_and_counted_not_merged() -> None:
    slicer = Slicer(WindowConfig(window_s=20, stride_s=10, lateness_s=0, modalities=("spans",)))
    slicer.add_spans(spans("cart", [100.0, 141.0]))
    closed = slicer.ready()
    assert [w.start_s for w in closed] == [100.0, 110.0, 120.0]
    # Panes 100-130 only served closed windows; 135 still belongs to open ones.
    assert slicer.add_spans(spans("cart", [101.0, 125.0, 135.0])) == 1
    assert slicer.late == 2


def test_slowest_modality_holds_the_watermark() -> None:
    slicer = Slicer(WindowConfig(window_s=20, stride_s=10, lateness_s=0, modalities=("spans", "metrics")))
    slicer.add_metrics(metric("cart", "container.cpu.utilization", 101.0, 20.0))
    slicer.add_spans(spans("cart", [150.0]))  # spans far ahead, metrics still at 101
    assert slicer.ready() == []
    slicer.add_metrics(metric("cart", "container.cpu.utilization", 125.0, 40.0))
    [window] = slicer.ready()
    assert window.services["cart"].features["cpu"] == pytest.approx(20.0)


def test_drain3_mines_one_template_for_lines_that_differ_in_parameters() -> None:
    book = TemplateBook()
    a = book.cluster("slow request GetCart took 812 ms")
    b = book.cluster("slow request GetCart took 95 ms")
    c = book.cluster("failed to call cartservice/GetCart: rpc error: code = Unavailable desc = connection refused")
    assert a == b != c
    assert "<NUM>" in book.template(a) or "<*>" in book.template(a)


def test_errors_mentioning_a_callee_blame_it() -> None:
    slicer = Slicer(WindowConfig(window_s=20, stride_s=10, lateness_s=0, modalities=("spans", "logs")))
    slicer.add_spans(spans("db", [100.0]))
    slicer.add_spans(spans("cart", [101.0, 102.0], error=True))
    slicer.add_logs(logs("cart", 103.0, ["request to db/Query timed out: context deadline exceeded"]))
    slicer.add_spans(spans("cart", [131.0]))
    slicer.add_logs(logs("cart", 131.0, ["health check ok"]))
    window = slicer.ready()[0]
    assert window.services["db"].features["blamed_by_callers"] == 2
    assert window.services["db"].features["blamed_in_logs"] == 1
    assert window.services["cart"].features["span_errors"] == 2


def _window(slicer: Slicer, t0: float, cpu: float, latency_s: float):  # type: ignore[no-untyped-def]
    slicer.add_metrics(metric("cart", "container.cpu.utilization", t0 + 1, cpu))
    slicer.add_spans(spans("cart", [t0 + 1 + i * 0.1 for i in range(50)], duration_s=latency_s))
    slicer.add_logs(logs("cart", t0 + 2, [f"health check ok {int(t0)}"]))
    return slicer


def test_baseline_scores_shifts_and_views_say_them_in_words() -> None:
    rng = np.random.default_rng(0)
    slicer = Slicer(WindowConfig(window_s=10, stride_s=10, lateness_s=0))
    baseline = Baseline(min_history=4)
    windows = []
    for k in range(8):
        _window(slicer, 100 + 10 * k, 20 + rng.normal(0, 0.5), 0.010)
        windows += slicer.ready()
    _window(slicer, 180, 95.0, 0.060)
    _window(slicer, 190, 20.0, 0.010)
    windows += slicer.ready()
    for window in windows[:-1]:
        zs, _, _ = baseline.score(window)
        baseline.learn(window, zs)
    zs, medians, warm = baseline.score(windows[-1])
    assert warm
    z = dict(zip(FEATURES, zs["cart"], strict=True))
    assert z["cpu"] > 10 and z["span_p50"] > 10
    found = deviations(zs, medians, windows[-1])
    assert {found[0].feature, found[1].feature} <= {"cpu", "span_p50", "span_p99"}
    views = render(windows[-1], found, slicer.templates)
    assert "cart: CPU usage" in views.metrics and "high" in views.metrics
    assert "own span time" in views.traces
    assert describe(found[0]).endswith("usual)")


def test_baseline_does_not_learn_an_ongoing_fault() -> None:
    slicer = Slicer(WindowConfig(window_s=10, stride_s=10, lateness_s=0))
    baseline = Baseline(min_history=3, history=5, abnormal_z=8.0)
    for k in range(12):
        _window(slicer, 100 + 10 * k, 20.0 if k < 4 else 95.0, 0.01)
    windows = slicer.ready()
    scores = []
    for window in windows:
        zs, _, _ = baseline.score(window)
        baseline.learn(window, zs)
        scores.append(zs["cart"][FEATURES.index("cpu")])
    assert all(s > 8 for s in scores[5:])  # still abnormal several windows into the fault


def test_a_modality_not_fetched_yet_holds_the_watermark_until_it_goes_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("services.embedding.windows.time.monotonic", lambda: clock[0])
    slicer = Slicer(WindowConfig(window_s=20, stride_s=10, lateness_s=0, idle_s=60))
    # A backlog replayed fast: metrics and logs run far ahead before the spans' partition is read at all.
    slicer.add_metrics(metric("cart", "container.cpu.utilization", 101.0, 20.0))
    slicer.add_metrics(metric("cart", "container.cpu.utilization", 300.0, 20.0))
    assert slicer.ready() == []  # spans (and logs) not seen yet: nothing closes, nothing of theirs is late
    slicer.add_spans(spans("cart", [105.0, 112.0]))
    assert slicer.late == 0
    clock[0] += 61  # logs never come: after idle_s of silence they stop holding the watermark
    slicer.add_spans(spans("cart", [290.0]))
    closed = slicer.ready()
    assert closed and closed[0].start_s == 100.0 and closed[0].spans == 2


def test_a_partition_read_far_ahead_makes_no_other_partitions_data_late() -> None:
    # A consumer catching up reads a whole fetch of one partition before the next: partition 0 runs to 300 s
    # while partition 1 still has 105-125 s to come. The modality is as far as its slowest partition.
    slicer = Slicer(WindowConfig(window_s=20, stride_s=10, lateness_s=0, modalities=("spans",)))
    slicer.expect("spans", ["0", "1"])
    slicer.add_spans(spans("cart", [101.0, 150.0, 300.0]), "0")
    assert slicer.ready() == []  # partition 1 not heard from yet: it holds the watermark
    slicer.add_spans(spans("cart", [105.0, 112.0, 125.0]), "1")
    assert [(w.start_s, w.spans) for w in slicer.ready()] == [(100.0, 3)]  # partition 1 is at 125
    slicer.add_spans(spans("cart", [140.0]), "1")
    assert [(w.start_s, w.spans) for w in slicer.ready()] == [(110.0, 2), (120.0, 1)]
    assert slicer.late == 0


def test_without_sources_the_newest_of_a_modality_counts_as_before() -> None:
    slicer = Slicer(WindowConfig(window_s=20, stride_s=10, lateness_s=0, modalities=("spans",)))
    slicer.add_spans(spans("cart", [101.0, 141.0]))
    assert [w.start_s for w in slicer.ready()] == [100.0, 110.0, 120.0]
    slicer.add_spans(spans("cart", [105.0]))  # one source: 141 closed [100, 120) already
    assert slicer.late == 1


def test_stream_state_taken_up_after_a_crash_goes_on_as_if_never_stopped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from services.embedding.service import EmbeddingEngine, StreamState

    config = WindowConfig(window_s=20, stride_s=10, lateness_s=0, modalities=("spans",))
    running = EmbeddingEngine(None, config)  # type: ignore[arg-type]  # the model is not needed to slice
    running.slicer.expect("spans", ["0"])
    running.slicer.add_spans(spans("cart", [101.0, 105.0, 112.0]), "0")
    StreamState(running, tmp_path / "state.pickle").save({("otlp_spans", 0): 7})
    restarted = EmbeddingEngine(None, config)  # type: ignore[arg-type]
    taken_up = StreamState(restarted, tmp_path / "state.pickle")
    assert taken_up.offsets() == {("otlp_spans", 0): 7}
    restarted.slicer.expect("spans", ["0"])
    for engine in (running, restarted):
        engine.slicer.add_spans(spans("cart", [126.0]), "0")
    assert [(w.start_s, w.spans) for w in restarted.slicer.ready()] == [(100.0, 3)]
    assert [(w.start_s, w.spans) for w in running.slicer.ready()] == [(100.0, 3)]
    other = EmbeddingEngine(None, WindowConfig(window_s=30, stride_s=15))  # type: ignore[arg-type]
    assert StreamState(other, tmp_path / "state.pickle").offsets() == {}  # saved with other windows: not taken up


def test_a_telemetry_record_is_decoded_by_its_topic_and_added() -> None:
    from services.common import topics

    by_record, by_message = Slicer(), Slicer()
    records = [
        (topics.OTLP_SPANS, spans("cart", [1.0, 2.0])),
        (topics.OTLP_METRICS, metric("cart", "cpu", 1.0, 0.5)),
        (topics.OTLP_LOGS, logs("cart", 1.5, ["ERROR boom"])),
    ]
    for topic, message in records:
        by_record.add_record(topic, message.SerializeToString(), "0")
    by_message.add_spans(records[0][1], "0")
    by_message.add_metrics(records[1][1], "0")
    by_message.add_logs(records[2][1], "0")
    assert by_record.spans == by_message.spans == 2
    closed = [(w.spans, w.metric_points, w.log_records) for w in by_record.ready(flush=True)]
    assert closed == [(w.spans, w.metric_points, w.log_records) for w in by_message.ready(flush=True)] and closed
    with pytest.raises(ValueError, match="not a telemetry topic"):
        by_record.add_record(topics.STATES, b"")
