"""Training and evaluation slices from the simulator, through the same OTLP path the service reads.

A scenario is played as OTLP records (the bytes the Collector would put on the topics),
decoded and sliced exactly as in the service, and each warm window is kept with its ground
truth: the fault kind when the fault was active for at least half of the window, "normal"
when it was not active at all; windows the fault only grazes are marked ambiguous.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.embedding.baseline import Baseline
from services.embedding.ingest import Slicer
from services.embedding.slices import Slice, make_slice
from services.embedding.windows import WindowConfig

NORMAL = "normal"
FAULT_AT_S = 180.0
DURATION_S = 360.0
FAULT_LENGTH_S = {"pod-kill": 40.0}  # the kill's effects last ~35 s (restart, warm-up)


@dataclass(frozen=True)
class CaseSpec:
    system: str
    seed: int
    kind: str  # a fault kind, or NORMAL
    target: str = ""  # service, service/operation (code), or pod

    def fault(self) -> str | None:
        if self.kind == NORMAL:
            return None
        length = FAULT_LENGTH_S.get(self.kind, 120.0)
        return f"{self.kind}:{self.target}@{FAULT_AT_S:.0f}s+{length:.0f}s"


@dataclass
class LabelledSlice:
    case: CaseSpec
    slice: Slice
    label: str  # fault kind or NORMAL
    ambiguous: bool
    root_cause: str | None  # the faulty service, on anomalous windows


def cases(system: str, kinds: Iterable[str], seeds: Iterable[int], normal: int = 0) -> list[CaseSpec]:
    """One case per (kind, seed) with a target drawn from the seed, plus ``normal`` fault-free runs."""
    from loadtests.simulator.sanity import case_target
    from loadtests.simulator.scenario import Scenario, ScenarioSpec

    probe = Scenario(ScenarioSpec(system=system, duration_s=1))
    out = []
    seeds = list(seeds)
    for kind in kinds:
        for seed in seeds:
            rng = np.random.default_rng([seed, sum(map(ord, kind))])
            out.append(CaseSpec(system, seed, kind, case_target(probe, kind, rng)))
    out += [CaseSpec(system, seed, NORMAL) for seed in seeds[:normal]]
    return out


def play(case: CaseSpec, config: WindowConfig) -> list[LabelledSlice]:
    """A scenario through OTLP bytes → slicer → baseline → views, with labels."""
    from loadtests.simulator.dataset import otlp_records
    from loadtests.simulator.scenario import Scenario, ScenarioSpec

    fault = case.fault()
    scenario = Scenario(
        ScenarioSpec(system=case.system, faults=(fault,) if fault else (), duration_s=DURATION_S, seed=case.seed)
    )
    truth = scenario.ground_truth()
    epoch = scenario.spec.epoch_s
    slicer, baseline = Slicer(config), Baseline()
    windows = []
    for chunk in scenario.chunks(10.0):
        for topic, value, _ in otlp_records(scenario, chunk):
            slicer.add_record(topic, value)
        windows += slicer.ready()
    windows += slicer.ready(flush=True)
    out = []
    for window in windows:
        piece = make_slice(window, baseline, slicer)
        if not piece.warm or window.end_s - epoch > DURATION_S:
            continue
        label, ambiguous = NORMAL, False
        if fault:
            f = truth["faults"][0]
            lo, hi = epoch + float(f["start_s"]), epoch + float(f["end_s"])
            overlap = max(0.0, min(hi, window.end_s) - max(lo, window.start_s)) / config.window_s
            if overlap >= 0.5:
                label = case.kind
            elif overlap > 0:
                ambiguous = True
        root = str(truth["root_cause_service"]) if label != NORMAL else None
        out.append(LabelledSlice(case, piece, label, ambiguous, root))
    return out


def _cache_key(case: CaseSpec, config: WindowConfig) -> str:
    source = Path(__file__).parent
    code = "".join(
        (source / m).read_text() for m in ("windows.py", "ingest.py", "baseline.py", "views.py", "slices.py")
    )
    blob = json.dumps([case.__dict__, config.__dict__, DURATION_S, FAULT_AT_S, code], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _play_cached(args: tuple[CaseSpec, WindowConfig, Path | None]) -> list[LabelledSlice]:
    case, config, cache = args
    if cache is not None:
        path = cache / f"{case.kind}-{case.seed}-{_cache_key(case, config)}.pkl"
        if path.is_file():
            return pickle.loads(path.read_bytes())
    out = play(case, config)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(out))
    return out


def slices(
    specs: list[CaseSpec], config: WindowConfig, cache: Path | None = None, workers: int = 2
) -> Iterator[tuple[CaseSpec, list[LabelledSlice]]]:
    """Every case's slices, played in ``workers`` processes and cached (keyed by the slicing code)."""
    jobs = [(c, config, cache) for c in specs]
    if workers <= 1:
        yield from ((c, _play_cached(j)) for c, j in zip(specs, jobs, strict=True))
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from zip(specs, pool.map(_play_cached, jobs), strict=True)
