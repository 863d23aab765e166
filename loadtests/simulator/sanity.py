"""Are the injected faults neither too loud nor too quiet? An n-sigma ranking on the metrics.

n-sigma (as RCAEval's ``nsigma``): fit mean and standard deviation of every ``<service>_<metric>``
column on the data before the fault, score each column by its largest |z| after it, rank
services by their best column. CPU and memory faults should mostly rank the injected service
in the top 3; delay and loss, which do not show in the faulty service's own metrics, clearly
less often.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pandas as pd

from loadtests.simulator.scenario import Scenario, ScenarioSpec

SANITY_KINDS = ("cpu", "memory", "disk", "delay", "loss", "pod-kill", "code")


def nsigma_ranking(frame: pd.DataFrame, inject_time: int) -> list[str]:
    normal = frame[frame.time < inject_time].drop(columns="time")
    anomal = frame[frame.time >= inject_time].drop(columns="time")
    std = normal.std().replace(0, np.nan)
    z = ((anomal - normal.mean()).abs() / std).max().fillna(0)
    ranking: list[str] = []
    for column in z.sort_values(ascending=False).index:
        service = column.split("_", 1)[0]
        if service not in ranking:
            ranking.append(service)
    return ranking


def case_target(scenario: Scenario, kind: str, rng: np.random.Generator) -> str:
    # A network fault on the entry service has no caller inside the system to show it.
    entry = scenario.topology.entry_services()
    services = [s for s in scenario.topology.services if s not in entry or kind in ("cpu", "memory")]
    service = str(rng.choice(services))
    if kind == "code":
        op = str(rng.choice(list(scenario.topology.services[service].operations)))
        return f"{service}/{op}"
    return service


def run_sanity(
    system: str = "online-boutique", kinds: Iterable[str] = SANITY_KINDS, cases: int = 6, seed: int = 100
) -> dict[str, dict[str, float]]:
    """Top-1/top-3 share per fault kind over ``cases`` scenarios each (10 min normal, 5 min fault)."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[int]] = defaultdict(list)
    for kind in kinds:
        for case in range(cases):
            probe = Scenario(ScenarioSpec(system=system, duration_s=1, seed=seed))
            target = case_target(probe, kind, rng)
            spec = ScenarioSpec(system=system, faults=(f"{kind}:{target}@600s+300s",), duration_s=900, seed=seed + case)
            scenario = Scenario(spec)
            truth = scenario.ground_truth()
            frame = scenario.run().metrics.services
            ranking = nsigma_ranking(frame, int(truth["inject_time"]))
            service = str(truth["root_cause_service"])
            hits[kind].append(ranking.index(service) + 1 if service in ranking else len(ranking) + 1)
    return {
        kind: {"top1": float(np.mean(np.array(r) <= 1)), "top3": float(np.mean(np.array(r) <= 3)), "cases": len(r)}
        for kind, r in hits.items()
    }


if __name__ == "__main__":
    for kind, row in run_sanity().items():
        print(f"{kind:>9}: top1 {row['top1']:.2f}  top3 {row['top3']:.2f}  ({row['cases']} cases)")
