"""Step-wise detection and diagnosis: each new step against the knowledge base and against normal behaviour.

For a step with embedding h of agent a in system s, the ``K`` cases of agent a most similar to h are taken
from the knowledge base, failure cases and normal references together (a failure case is a failure step
or a step after it in a failed run, see :func:`services.detector.train.state_of`), each weighted
``exp((cos - best cos) / 0.05)``:

- ``knowledge`` = the failure cases' share of that weight, in [0, 1]: most of what the step resembles
  went wrong. A share over several neighbours, unlike one nearest failure against one nearest normal, is
  not decided by a single near-duplicate of either kind, which fired early and on success runs;
- ``deviation = 1 - max cos(h, normal steps of a)``: the step is unlike all of the agent's normal
  behaviour (this is what can fire on failure types the knowledge base has never seen);
- ``ungrounded``: how far the step's grounding features (:mod:`services.detector.grounding`: does the
  output repeat what it received, name what its input is about, change what it was asked to change) and
  its hand-off (whose output its input holds) lie outside the range they take over agent a's normal steps.
  A sentence embedding barely moves when one requirement is left out of a plan, another service is named
  in a report or a reviewer approves without test results; these features do.

A step alert is raised the first time ``knowledge > θ_k`` (type: the weighted vote of the failure cases
among those neighbours), ``ungrounded > θ_g`` (type: the vote of the agent's nearest failure cases) or
``deviation > θ_d`` (type ``unknown``, unless the failure cases hold most of the vote: then their vote
too). When the run ends, if no step alert was raised, the full-trace embedding is checked the same way
against trace-level cases (``θ_t``). Thresholds are calibrated per system on the seed runs with each run
left out of its own search, and the normal ranges fitted on the other seeds' runs.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from services.detector.encoder import GROUNDING_WEIGHT, SENDERS, Backbone, StepEncoder, step_features
from services.detector.grounding import GROUNDING_DIM, Envelope
from services.detector.knowledge_base import STEP, TRACE, KnowledgeBase, Match
from services.detector.runs import RunStore
from services.detector.steps import Step

UNKNOWN = "unknown"
TOP_K = 3  # failure cases reported with a score when none is among the neighbours
NEIGHBOURS = 15  # K: the cases (failure and normal) whose weighted vote is the knowledge score
VOTE_SCALE = 0.05  # a case's vote is exp((similarity - best similarity) / VOTE_SCALE)
MAX_RUNS = 10_000  # runs whose state is kept; the oldest are forgotten beyond this
DISABLED = 10.0  # a threshold no score reaches


@dataclass(frozen=True)
class Thresholds:
    knowledge: float = 0.5
    deviation: float = 1.0  # 1.0 disables (cosine distance tops out at 2, but normal-vs-anything is below 1)
    trace: float = 0.5
    grounding: float = DISABLED
    envelopes: dict[str, Envelope] = field(default_factory=dict, compare=False)  # agent → its normal range

    def ungrounded(self, agent: str, features: np.ndarray) -> float:
        """``ungrounded`` of a step of ``agent`` from its features; 0 for an agent without a normal range."""
        envelope = self.envelopes.get(agent)
        return envelope.outside(grounding_block(features)) if envelope else 0.0

    def ungrounded_steps(self, steps: list[Step], features: np.ndarray) -> list[float]:
        """``ungrounded`` of each of a run's steps from their features (one row per step)."""
        return [self.ungrounded(step.agent, row) for step, row in zip(steps, features, strict=True)]

    def as_dict(self) -> dict:
        return {
            "knowledge": self.knowledge,
            "deviation": self.deviation,
            "trace": self.trace,
            "grounding": self.grounding,
            "envelopes": {agent: e.as_dict() for agent, e in sorted(self.envelopes.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Thresholds:
        envelopes = {agent: Envelope.from_dict(e) for agent, e in d.get("envelopes", {}).items()}
        return cls(d["knowledge"], d["deviation"], d["trace"], d.get("grounding", DISABLED), envelopes)


def grounding_block(features: np.ndarray) -> np.ndarray:
    """What an agent's normal range covers, from step features: the grounding features (unscaled) and the
    hand-off, the one-hot of whose output the step's input holds (a reviewer approving without a test
    report in front of it has a hand-off no normal reviewer step has)."""
    return np.concatenate([features[..., -GROUNDING_DIM:] / GROUNDING_WEIGHT, features[..., SENDERS]], axis=-1)


@dataclass(frozen=True)
class AlertInfo:
    id: str
    run_id: str
    system: str
    agent: str
    step_index: int
    failure_type: str
    confidence: float
    matched: list[Match]
    level: int  # STEP or TRACE
    knowledge: float
    deviation: float
    detected_at: float
    trace_id: str = ""
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)  # for expert feedback
    ungrounded: float = 0.0


@dataclass(frozen=True)
class StepScore:
    knowledge: float
    deviation: float
    matched: list[Match]
    nearest_normal: Match | None = None
    ungrounded: float = 0.0

    @property
    def deviation_matches(self) -> list[Match]:
        """For a deviation alert: the failure cases to diagnose it by when they hold most of the neighbours'
        vote (a known failure whose vote stayed under θ_k), else none (type ``unknown``)."""
        return self.matched if self.knowledge >= 0.5 else []

    @property
    def rejected_before(self) -> bool:
        """An expert rejected an alert on a step at least as close as any known failure: stay quiet."""
        normal = self.nearest_normal
        best = self.matched[0].similarity if self.matched else -1.0
        return normal is not None and normal.case.source == "expert" and normal.similarity >= best


@dataclass(frozen=True)
class StepVerdict:
    run_id: str
    step_index: int
    score: StepScore
    alert: AlertInfo | None
    latency_ms: float


@dataclass
class _RunState:
    system: str
    trace_id: str = ""
    prefix_state: object = None
    last_prefix: np.ndarray | None = None
    steps: list[Step] = field(default_factory=list)
    alerted_at: int = -1  # the index of the step the run alerted on
    ended: bool = False

    @property
    def alerted(self) -> bool:
        return self.alerted_at >= 0

    def seen(self, step: Step) -> int:
        """The position of ``step`` among the run's steps if it was observed already (a redelivery), else -1."""
        return next((i for i, s in enumerate(self.steps) if s == step), -1)


def alert_id(run_id: str, level: int, step_index: int) -> str:
    """The same for the same run, level and step: an alert raised again after a restart is the same event."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"faultline:alert/{run_id}/{level}/{step_index}").hex


def diagnose(matches: list[Match]) -> tuple[str, float]:
    """The failure type the matched cases vote for, and its share of the vote.

    Votes are ``exp((sim - best) / 0.05)``: a near-duplicate of a known case decides, while cases of similar
    similarity share the decision.
    """
    if not matches:
        return UNKNOWN, 0.0
    best_similarity = max(m.similarity for m in matches)
    votes: Counter[str] = Counter()
    for match in matches:
        votes[match.case.failure_type] += math.exp((match.similarity - best_similarity) / VOTE_SCALE)
    best, weight = votes.most_common(1)[0]
    return best, weight / sum(votes.values())


def _confidence(score: float, threshold: float) -> float:
    return 1.0 / (1.0 + math.exp(-(score - threshold) / 0.05))


def failure_share(failures: list[Match], normals: list[Match], k: int = NEIGHBOURS) -> tuple[float, list[Match]]:
    """The failure cases' share of the weighted vote of the ``k`` best of ``failures`` and ``normals`` (each
    best first), and those failure cases; 0 when there is no failure case, 1 when there is no normal one."""
    if not failures:
        return 0.0, []
    neighbours = sorted([*failures, *normals], key=lambda m: -m.similarity)[:k]
    best = neighbours[0].similarity
    weight = {id(m): math.exp((m.similarity - best) / VOTE_SCALE) for m in neighbours}
    failing = [m for m in neighbours if not m.case.normal]
    total = sum(weight.values())
    return sum(weight[id(m)] for m in failing) / total, failing


def score_vector(
    kb: KnowledgeBase, level: int, system: str, vector: np.ndarray, agent: str | None, exclude_run: str | None = None
) -> StepScore:
    failures = kb.search(level, system, vector, NEIGHBOURS, agent=agent, exclude_run=exclude_run)
    normals = kb.search(level, system, vector, NEIGHBOURS, normal=True, agent=agent, exclude_run=exclude_run)
    share, failing = failure_share(failures, normals)
    nearest_normal = normals[0].similarity if normals else -1.0
    return StepScore(share, 1.0 - nearest_normal, failing or failures[:TOP_K], normals[0] if normals else None)


class Detector:
    """Online EAGER: thread-safe; one instance serves Kafka and gRPC alike. With a :class:`RunStore` the open
    runs survive a restart."""

    def __init__(
        self,
        encoder: StepEncoder,
        backbone: Backbone,
        kb: KnowledgeBase,
        thresholds: dict[str, Thresholds],
        store: RunStore | None = None,
    ) -> None:
        self.encoder, self.backbone, self.kb, self.thresholds = encoder, backbone, kb, thresholds
        self.store = store
        self._runs: dict[str, _RunState] = {}
        self._lock = threading.Lock()

    def thresholds_for(self, system: str) -> Thresholds:
        return self.thresholds.get(system, Thresholds())

    def embed(self, steps: list[Step]) -> np.ndarray:
        """Embeddings of consecutive steps of one run, from its first step."""
        return self.encoder.embed_steps(step_features(self.backbone, steps))

    def _run(self, run_id: str, system: str, trace_id: str) -> _RunState:
        """The run's state: in memory, taken up from the store (after a restart), or new."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            return run
        stored = self.store.load(run_id) if self.store is not None else None
        run = _RunState(system, trace_id, self.encoder.start())
        if stored:
            run.steps, run.alerted_at, run.ended = stored
        if run.steps:
            run.prefix_state, prefixes = self.encoder.advance(run.prefix_state, self.embed(run.steps))
            run.last_prefix = prefixes[-1]
        with self._lock:
            if len(self._runs) >= MAX_RUNS and run_id not in self._runs:
                self._runs.pop(next(iter(self._runs)))
            return self._runs.setdefault(run_id, run)

    def observe(self, step: Step) -> StepVerdict:
        started = time.perf_counter()
        run = self._run(step.run_id, step.system, step.trace_id)
        if step.index < 0:  # the framework did not number its steps: arrival order
            step = replace(step, index=len(run.steps))
        with self._lock:
            earlier, position = list(run.steps), run.seen(step)
        if position >= 0:  # redelivered: score it as it was, and raise its alert again if it had one
            earlier = earlier[:position]
        features = step_features(self.backbone, [step], earlier)
        vector = self.encoder.embed_steps(features)[0]
        if run.ended:  # a step arriving after its run's end: scored for the verdict, the run not started over
            score = score_vector(self.kb, STEP, step.system, vector, step.agent)
            return StepVerdict(step.run_id, step.index, score, None, (time.perf_counter() - started) * 1e3)
        if position < 0:
            with self._lock:
                run.prefix_state, prefixes = self.encoder.advance(run.prefix_state, vector[None])
                run.last_prefix = prefixes[-1]
                run.steps.append(step)
            if self.store is not None:
                self.store.add(step)
        score = score_vector(self.kb, STEP, step.system, vector, step.agent)
        score = replace(score, ungrounded=self.thresholds_for(step.system).ungrounded(step.agent, features[0]))
        alert = None
        if not run.alerted or run.alerted_at == step.index:
            alert = self._step_alert(step, score, vector)
        if alert is not None and not run.alerted:
            with self._lock:
                run.alerted_at = step.index
            if self.store is not None:
                self.store.mark_alerted(step.run_id, step.index)
        verdict = StepVerdict(step.run_id, step.index, score, alert, (time.perf_counter() - started) * 1e3)
        if step.end_of_run:
            trace_alert = self.end_run(step.run_id)
            if verdict.alert is None and trace_alert is not None:
                verdict = StepVerdict(step.run_id, step.index, score, trace_alert, verdict.latency_ms)
        return verdict

    def _step_alert(self, step: Step, score: StepScore, vector: np.ndarray) -> AlertInfo | None:
        limits = self.thresholds_for(step.system)
        if score.rejected_before:
            return None
        if score.knowledge > limits.knowledge:
            failure_type, _share = diagnose(score.matched)
            confidence = _confidence(score.knowledge, limits.knowledge)
        elif score.ungrounded > limits.grounding:
            failure_type = diagnose(score.matched)[0]
            confidence = _confidence(score.ungrounded, limits.grounding)
        elif score.deviation > limits.deviation:
            failure_type = diagnose(score.deviation_matches)[0]
            confidence = _confidence(score.deviation, limits.deviation)
        else:
            return None
        return AlertInfo(
            alert_id(step.run_id, STEP, step.index),
            step.run_id,
            step.system,
            step.agent,
            step.index,
            failure_type,
            confidence,
            score.matched,
            STEP,
            score.knowledge,
            score.deviation,
            time.time(),
            step.trace_id,
            vector,
            score.ungrounded,
        )

    def end_run(self, run_id: str, system: str = "", trace_id: str = "") -> AlertInfo | None:
        """The trace-level check, once per run; the run's steps are let go, the run kept as ended."""
        run = self._run(run_id, system, trace_id)
        with self._lock:
            was_ended, run.ended = run.ended, True
            steps, run.steps = run.steps, []
        if self.store is not None:
            self.store.end(run_id)
        if was_ended or run.last_prefix is None or run.alerted:
            return None
        score = score_vector(self.kb, TRACE, run.system, run.last_prefix, None)
        limit = self.thresholds_for(run.system).trace
        if score.knowledge <= limit:
            return None
        failure_type, _share = diagnose(score.matched)
        last = steps[-1]
        # the whole trace matched: no single agent is pinpointed
        return AlertInfo(
            alert_id(run_id, TRACE, last.index),
            run_id,
            run.system,
            "",
            last.index,
            failure_type,
            _confidence(score.knowledge, limit),
            score.matched,
            TRACE,
            score.knowledge,
            score.deviation,
            time.time(),
            run.trace_id,
            run.last_prefix,
        )

    def run_steps(self, run_id: str) -> list[Step]:
        with self._lock:
            run = self._runs.get(run_id)
            return list(run.steps) if run else []


# --- offline: seed runs, calibration --------------------------------------------------------------


@dataclass(frozen=True)
class RunScores:
    run_id: str
    system: str
    step_scores: list[StepScore]
    trace_score: StepScore


def embed_run(encoder: StepEncoder, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(step embeddings, prefix embeddings) of one run from its step features."""
    steps = encoder.embed_steps(features)
    _, prefixes = encoder.advance(encoder.start(), steps)
    return steps, prefixes


def score_run(
    kb: KnowledgeBase,
    system: str,
    agents: list[str],
    steps: np.ndarray,
    trace: np.ndarray,
    exclude_run: str | None,
    ungrounded: list[float] | None = None,
) -> RunScores:
    step_scores = [
        replace(score_vector(kb, STEP, system, v, a, exclude_run), ungrounded=g)
        for v, a, g in zip(steps, agents, ungrounded or [0.0] * len(agents), strict=True)
    ]
    return RunScores(exclude_run or "", system, step_scores, score_vector(kb, TRACE, system, trace, None, exclude_run))


def first_alert(scores: RunScores, limits: Thresholds) -> tuple[int, str, list[Match]] | None:
    """(step index, kind, matches) of the first alert the thresholds give; index -1 = trace level."""
    for index, score in enumerate(scores.step_scores):
        if score.knowledge > limits.knowledge:
            return index, "knowledge", score.matched
        if score.ungrounded > limits.grounding:
            return index, "grounding", score.matched
        if score.deviation > limits.deviation:
            return index, "deviation", score.deviation_matches
    if scores.trace_score.knowledge > limits.trace:
        return -1, "trace", scores.trace_score.matched
    return None


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def calibrate(runs: list[RunScores], failed: list[bool], max_normal_alarm: float = 0.02) -> Thresholds:
    """Per-system thresholds from leave-one-run-out scores of labelled seed runs.

    θ_d and θ_g are the (1 - ``max_normal_alarm``) quantiles of the success runs' largest deviation and
    ungrounded score; θ_k then maximises run-level F1 with them in place, and θ_t maximises F1 over the runs
    that no step alert caught.
    """
    normal = [r for r, f in zip(runs, failed, strict=True) if not f]

    def quantile_of_max(field_of) -> float:  # type: ignore[no-untyped-def]
        largest = [max(field_of(s) for s in r.step_scores) for r in normal] or [1.0]
        return float(np.quantile(largest, 1 - max_normal_alarm)) + 1e-6

    deviation = quantile_of_max(lambda s: s.deviation)
    grounding = quantile_of_max(lambda s: s.ungrounded)
    disabled = DISABLED

    def f1_of(limits: Thresholds) -> float:
        outcome = [first_alert(r, limits) is not None for r in runs]
        tp = sum(o and f for o, f in zip(outcome, failed, strict=True))
        fp = sum(o and not f for o, f in zip(outcome, failed, strict=True))
        return _f1(tp, fp, sum(failed) - tp)

    def best(values: list[float], make) -> float:  # type: ignore[no-untyped-def]
        # candidates halfway between observed scores; among equally good ones, the middle one
        points = sorted(set(values))
        candidates = [points[0] - 1e-3] + [(a + b) / 2 for a, b in itertools.pairwise(points)]
        scored = [(f1_of(make(t)), t) for t in candidates]
        top = max(f for f, _ in scored)
        tied = [t for f, t in scored if f == top]
        return tied[len(tied) // 2]

    knowledge_values = [max(s.knowledge for s in r.step_scores) for r in runs]
    knowledge = best(knowledge_values, lambda t: Thresholds(t, deviation, disabled, grounding))
    trace_values = [r.trace_score.knowledge for r in runs]
    trace = best([*trace_values, disabled], lambda t: Thresholds(knowledge, deviation, t, grounding))
    return Thresholds(knowledge, deviation, trace, grounding)
