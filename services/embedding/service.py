"""The embedding service: telemetry topics in, one StateEmbedding per window out, plus gRPC.

The consumer feeds every OTLP record into the slicer; whenever the watermark closes windows
they are scored against the rolling baseline, embedded, run through the heads and published
on faultline.states.v1. A record that is not valid OTLP never reaches a handler: the bus
dead-letters it and the partition moves on. Recent states are kept in memory for GetStates.

With a :class:`StreamState` the windows being built, the log templates and the baselines are saved
with the offsets they cover at every offset commit, and a restart goes on from there: a crash loses
no window and does not start the baselines cold. A window published again after a crash (handled
after the last save) keeps its event id, so consumers drop the repeat.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from services.common import otlp, topics
from services.common.bus import Delivery, Publisher, Route
from services.common.grpc_server import GrpcService
from services.common.pb.faultline.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from services.embedding.baseline import Baseline
from services.embedding.checkpoint import Prediction, RuntimeSlicerModel
from services.embedding.ingest import Slicer
from services.embedding.slices import Slice, make_slice
from services.embedding.views import MODALITY_OF
from services.embedding.windows import WindowConfig

log = logging.getLogger(__name__)
WINDOWS = Counter("faultline_embedding_windows_total", "Windows embedded and published", ["system"])
LATE = Counter("faultline_embedding_late_total", "Telemetry items dropped for arriving after their window closed")
EMBED_SECONDS = Histogram("faultline_embedding_window_seconds", "Time to score, embed and classify one window")


def to_proto(piece: Slice, prediction: Prediction, version: str) -> embedding_pb2.StateEmbedding:
    window = piece.window
    span = common_pb2.TimeWindow()
    span.start.FromNanoseconds(int(window.start_s * 1e9))
    span.end.FromNanoseconds(int(window.end_s * 1e9))
    # Before the baseline is warm a window has no "usual" to deviate from: the heads were trained and
    # are evaluated on warm windows only, so a cold window's score is noise, and passing it on made
    # the detector open an incident on the first minute of every fresh start.
    anomalous = prediction.anomalous and piece.warm
    state = embedding_pb2.StateEmbedding(
        system=window.system,
        window=span,
        vector=prediction.vector.tolist(),
        state_id=prediction.state,
        anomaly_score=prediction.anomaly_score if piece.warm else 0.0,
        anomalous=anomalous,
        model_version=version,
        spans=window.spans,
        metric_points=window.metric_points,
        log_records=window.log_records,
    )
    if anomalous:
        state.failure_type = prediction.failure_type
        state.failure_type_confidence = prediction.failure_type_confidence
        state.root_cause_services.extend(
            embedding_pb2.RankedService(service=s, score=p) for s, p in prediction.root_causes[:5]
        )
    state.evidence.extend(
        embedding_pb2.Signal(
            modality=MODALITY_OF[d.feature],
            service=d.service,
            name=d.feature,
            value=d.value,
            baseline=d.baseline,
            score=d.z,
        )
        for d in piece.evidence()
    )
    return state


STATE_VERSION = 1


def state_event_id(state: embedding_pb2.StateEmbedding) -> str:
    """The same for the same window of the same system from the same model: a replayed window is a repeat."""
    key = (
        f"{state.system}/{state.window.start.ToNanoseconds()}/{state.window.end.ToNanoseconds()}/{state.model_version}"
    )
    return uuid.uuid5(uuid.NAMESPACE_URL, f"faultline:state/{key}").hex


class StreamState:
    """The embedding consumer's :class:`~services.common.bus.Checkpoint`: the engine's stream state in one file.

    One consumer per group (one replica): the file covers the partitions this process held.
    """

    def __init__(self, engine: EmbeddingEngine, path: Path) -> None:
        self.engine, self.path = engine, path
        self._offsets = engine.restore(path.read_bytes()) if path.is_file() else {}
        if self._offsets:
            log.info("stream state taken up", extra={"path": str(path), "partitions": len(self._offsets)})

    def offsets(self) -> dict[tuple[str, int], int]:
        return dict(self._offsets)

    def save(self, offsets: dict[tuple[str, int], int]) -> None:
        data = self.engine.snapshot(offsets)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, self.path)  # a crash leaves the old file or the new one, never half of one
        self._offsets = offsets


class InvalidWindow(ValueError):
    """An EmbedWindow request that cannot be answered; the message says why."""


class EmbeddingEngine:
    """Slicer + baseline + model, shared by the consumer and the RPCs."""

    def __init__(self, model: RuntimeSlicerModel, config: WindowConfig | None = None, keep: int = 10_000) -> None:
        self.model = model
        self.config = config or model.window
        self.slicer = Slicer(self.config)
        self.baseline = Baseline()
        self.states: deque[embedding_pb2.StateEmbedding] = deque(maxlen=keep)
        self._lock = threading.Lock()  # baseline and model: one window at a time
        self.publisher: Publisher | None = None
        self.states_topic = topics.STATES
        self.published = 0

    # -- the stream ------------------------------------------------------------------------------

    def routes(self, names: dict[str, str] | None = None) -> list[Route]:
        """Consumer routes for the three telemetry topics (``names`` renames them, e.g. in tests)."""
        names = names or {}
        handlers = {
            topics.OTLP_SPANS: ("spans", lambda d: self._ingest(self.slicer.add_spans, d)),
            topics.OTLP_METRICS: ("metrics", lambda d: self._ingest(self.slicer.add_metrics, d)),
            topics.OTLP_LOGS: ("logs", lambda d: self._ingest(self.slicer.add_logs, d)),
        }
        return [
            Route(
                names.get(t, t),
                otlp.TOPIC_MESSAGE[t],
                h,
                cloudevents=False,
                # each partition is a source of its own: the watermark waits for the slowest (see windows.py)
                on_assign=lambda partitions, m=modality: self.slicer.expect(m, [str(p) for p in partitions]),
            )
            for t, (modality, h) in handlers.items()
        ]

    def _ingest(self, add, delivery: Delivery) -> None:  # type: ignore[no-untyped-def]
        late = self.slicer.late
        add(delivery.message, str(delivery.partition))
        if self.slicer.late > late:
            LATE.inc(self.slicer.late - late)
        self.emit(self.slicer.ready())

    def emit(self, windows: list) -> list[embedding_pb2.StateEmbedding]:  # type: ignore[type-arg]
        if not windows:
            return []
        began = time.perf_counter()
        with self._lock:
            pieces = [make_slice(w, self.baseline, self.slicer) for w in windows]
            predictions = self.model.predict(pieces)
        out = [to_proto(p, q, self.model.version) for p, q in zip(pieces, predictions, strict=True)]
        EMBED_SECONDS.observe((time.perf_counter() - began) / len(out))
        for state in out:
            self.states.append(state)
            WINDOWS.labels(state.system).inc()
            if self.publisher is not None:
                self.publisher.publish(
                    self.states_topic, state, key=state.system, subject=state.system, event_id=state_event_id(state)
                )
        self.published += len(out)
        return out

    # -- state across restarts (see StreamState) ----------------------------------------------------

    def snapshot(self, offsets: dict[tuple[str, int], int]) -> bytes:
        with self._lock, self.slicer.lock:
            return pickle.dumps(
                {
                    "version": STATE_VERSION,
                    "config": self.config,
                    "systems": self.slicer.systems,
                    "templates": self.slicer.templates,
                    "baseline": self.baseline,
                    "offsets": offsets,
                },
                protocol=pickle.HIGHEST_PROTOCOL,
            )

    def restore(self, data: bytes) -> dict[tuple[str, int], int]:
        """Takes up a snapshot; returns the offsets it covers (empty if it does not fit this engine)."""
        saved = pickle.loads(data)  # written by this service, into its own state path
        if saved.get("version") != STATE_VERSION or saved.get("config") != self.config:
            log.warning("saved stream state not taken up: another format or other windows")
            return {}
        now = time.monotonic()
        with self._lock, self.slicer.lock:
            for windows in saved["systems"].values():
                # Wall-clock bookkeeping starts over: every source holds the watermark as after a fresh start.
                windows.expected, windows.opened = self.slicer.expected, now
                for heard in windows.sources.values():
                    heard.update({source: (newest, now) for source, (newest, _) in heard.items()})
            self.slicer.systems, self.slicer.templates = saved["systems"], saved["templates"]
            self.baseline = saved["baseline"]
        return dict(saved["offsets"])

    # -- ad hoc ----------------------------------------------------------------------------------

    def embed_window(self, request: embedding_pb2.EmbedWindowRequest) -> embedding_pb2.StateEmbedding:
        if not request.HasField("window"):
            raise InvalidWindow("window is required")
        start = request.window.start.ToNanoseconds() / 1e9
        end = request.window.end.ToNanoseconds() / 1e9
        if end <= start:
            raise InvalidWindow(f"window.end ({end:.3f}) must be after window.start ({start:.3f})")
        length = end - start
        # One pane = the whole requested window; no lateness: everything sent is all there is.
        slicer = Slicer(WindowConfig(length, length, 0.0, origin_s=start), self.slicer.templates)
        for field, decode, add in (
            ("spans", otlp.decode_spans, slicer.add_spans),
            ("metrics", otlp.decode_metrics, slicer.add_metrics),
            ("logs", otlp.decode_logs, slicer.add_logs),
        ):
            for i, value in enumerate(getattr(request, field)):
                try:
                    add(decode(value))
                except (ValueError, DecodeError) as error:
                    raise InvalidWindow(f"{field}[{i}] is not an OTLP export request: {error}") from error
        windows = [
            w
            for w in slicer.ready(flush=True)
            if start <= w.start_s < end and w.spans + w.metric_points + w.log_records
        ]
        if request.system:
            windows = [w for w in windows if w.system == request.system]
        if not windows:
            raise InvalidWindow("no telemetry of the requested system inside the window")
        window = max(windows, key=lambda w: w.spans + w.metric_points + w.log_records)
        window.start_s, window.end_s = start, end
        with self._lock:
            piece = make_slice(window, self.baseline, self.slicer, learn=False)
            prediction = self.model.predict([piece])[0]
        return to_proto(piece, prediction, self.model.version)

    def get_states(self, request: embedding_pb2.GetStatesRequest) -> embedding_pb2.GetStatesResponse:
        lo = request.window.start.ToNanoseconds() if request.HasField("window") else 0
        hi = request.window.end.ToNanoseconds() if request.HasField("window") and request.window.HasField("end") else 0
        limit = request.limit or 1000
        found = [
            s
            for s in list(self.states)
            if (not request.system or s.system == request.system)
            and s.window.start.ToNanoseconds() >= lo
            and (not hi or s.window.end.ToNanoseconds() <= hi)
        ]
        return embedding_pb2.GetStatesResponse(states=found[-limit:])

    def model_info(self) -> embedding_pb2.EmbeddingModelInfo:
        meta = self.model.meta
        info = embedding_pb2.EmbeddingModelInfo(
            version=self.model.version,
            backbone=self.model.backbone.name,
            dimension=self.model.model.dim,
            states=self.model.heads.partition.k,
            failure_types=self.model.heads.heads.failure_types,
            window_s=self.config.window_s,
            stride_s=self.config.stride_s,
        )
        if meta.get("trained_at"):
            info.trained_at.FromJsonString(str(meta["trained_at"]).replace("+00:00", "Z"))
        return info


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, engine: EmbeddingEngine) -> None:
        self.engine = engine

    def EmbedWindow(self, request, context):  # type: ignore[no-untyped-def]
        try:
            return self.engine.embed_window(request)
        except InvalidWindow as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    def GetStates(self, request, context):  # type: ignore[no-untyped-def]
        return self.engine.get_states(request)

    def GetModelInfo(self, request, context):  # type: ignore[no-untyped-def]
        return self.engine.model_info()


def embedding_service(engine: EmbeddingEngine) -> GrpcService:
    name = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
    return GrpcService(
        name,
        lambda server: embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(engine), server),
    )
