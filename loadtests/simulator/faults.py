"""Injected faults and their effects, with the ground truth each scenario writes.

A fault is written ``kind:target@start[+duration]``, times in s (or with an m suffix):
``cpu:cartservice@600s``, ``memory:adservice-0@10m+5m``, ``code:cartservice/GetCart@600``.
The target is a service (all its pods), one pod, or for ``code`` one operation.

How each fault shows, and where (the point of the simulator is that it is *not* everywhere):
- cpu: the pods' CPU saturates; own processing slows (queueing) and spreads.
- memory: a leak grows the pods' memory; garbage collection slows the pods as it nears the
  limit, and at the limit the pod is OOM-killed and restarts (then leaks again).
- disk: the pods' disk I/O jumps; operations wait on I/O.
- delay: responses from the pods are delayed on the network; the pods' own spans and CPU do
  not change, their *callers* see the time.
- loss: packets to and from the pods are lost; a share of calls waits for TCP retransmission
  (hundreds of ms) and some time out at the caller.
- pod-kill: the pod is killed and restarts; calls routed to it fail until it is back.
- code: one operation throws an exception for a share of calls.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from loadtests.simulator.topology import Topology, TopologyError

FAULT_KINDS = ("cpu", "memory", "disk", "delay", "loss", "pod-kill", "code")
DEFAULT_DURATION_S = {"pod-kill": 60.0}
_SPEC = re.compile(r"^(?P<kind>[a-z-]+):(?P<target>[^@]+)@(?P<start>[\d.]+[sm]?)(?:\+(?P<duration>[\d.]+[sm]?))?$")


def _seconds(text: str) -> float:
    if text.endswith("m"):
        return float(text[:-1]) * 60
    return float(text.rstrip("s"))


@dataclass(frozen=True)
class Fault:
    kind: str
    service: str
    start_s: float
    duration_s: float = 300.0
    pod: str | None = None  # None: every pod of the service
    operation: str | None = None  # code faults only
    intensity: float = 1.0

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def ground_truth(self, topology: Topology) -> dict[str, object]:
        pods = [self.pod] if self.pod else list(topology.services[self.service].pods)
        return {
            **asdict(self),
            "end_s": self.end_s,
            "pods": pods,
            "nodes": sorted({topology.pod_node[p] for p in pods}),
        }


def parse_fault(spec: str, topology: Topology, duration_s: float | None = None) -> Fault:
    match = _SPEC.match(spec.strip())
    if not match:
        raise ValueError(f"fault {spec!r} is not kind:target@start[+duration] (e.g. cpu:cartservice@600s+300s)")
    kind, target = match["kind"], match["target"]
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    operation = pod = None
    if "/" in target:
        target, operation = target.split("/", 1)
    if target not in topology.services:
        owner = next((s for s in topology.services.values() if target in s.pods), None)
        if owner is None:
            raise TopologyError(f"fault target {target!r} is neither a service nor a pod of {topology.system}")
        pod, target = target, owner.name
    if kind == "code":
        service = topology.services[target]
        operation = operation or next(iter(service.operations))
        if operation not in service.operations:
            raise TopologyError(f"{target} has no operation {operation!r}")
    elif operation is not None:
        raise ValueError(f"only code faults name an operation ({spec!r})")
    if kind == "pod-kill" and pod is None:
        pod = topology.services[target].pods[0]
    default = duration_s or DEFAULT_DURATION_S.get(kind, 300.0)
    duration = _seconds(match["duration"]) if match["duration"] else default
    return Fault(kind, target, _seconds(match["start"]), duration, pod=pod, operation=operation)


class FaultModel:
    """Vectorised effects of a set of faults on calls at times ``t`` (seconds) to pods ``pod``."""

    def __init__(self, topology: Topology, faults: list[Fault]) -> None:
        self.topology = topology
        self.faults = faults
        self.pod_names = [p for s in topology.services.values() for p in s.pods]
        self.pod_index = {p: i for i, p in enumerate(self.pod_names)}
        self._targets = [self.pods_of(f) for f in faults]

    def pods_of(self, fault: Fault) -> np.ndarray:
        pods = [fault.pod] if fault.pod else list(self.topology.services[fault.service].pods)
        return np.array([self.pod_index[p] for p in pods])

    def _active(self, i: int, t: np.ndarray, pod: np.ndarray) -> np.ndarray:
        fault = self.faults[i]
        return (t >= fault.start_s) & (t < fault.end_s) & np.isin(pod, self._targets[i])

    def memory_fraction(self, i: int, t: np.ndarray) -> np.ndarray:
        """Leaked share of the memory limit: a saw-tooth that reaches 1 (OOM) every ~40% of the fault."""
        fault = self.faults[i]
        cycle = 0.4 * fault.duration_s
        return np.clip((t - fault.start_s) % cycle / cycle, 0, 1) * (t >= fault.start_s) * (t < fault.end_s)

    def oom_count(self, i: int, t: np.ndarray) -> np.ndarray:
        """OOM kills so far (the pods' restart counter)."""
        fault = self.faults[i]
        cycle = 0.4 * fault.duration_s
        return np.floor(np.clip(np.minimum(t, fault.end_s) - fault.start_s, 0, None) / cycle)

    def oom_down(self, i: int, t: np.ndarray) -> np.ndarray:
        """The few seconds after each OOM kill while the container restarts."""
        fault = self.faults[i]
        cycle = 0.4 * fault.duration_s
        since = t - fault.start_s
        return (since >= cycle) & (since % cycle < 8.0) & (t < fault.end_s)

    def processing(self, t: np.ndarray, pod: np.ndarray, service: str, operation: str) -> tuple[np.ndarray, np.ndarray]:
        """(latency multiplier, extra lognormal sigma) of the pods' own work."""
        mult = np.ones_like(t)
        spread = np.zeros_like(t)
        for i, fault in enumerate(self.faults):
            if fault.service != service or fault.kind not in ("cpu", "memory", "disk"):
                continue
            on = self._active(i, t, pod)
            if not on.any():
                continue
            if fault.kind == "cpu":
                mult = np.where(on, mult * (1 + 2.5 * fault.intensity), mult)
                spread = np.where(on, spread + 0.35, spread)
            elif fault.kind == "memory":
                frac = self.memory_fraction(i, t)
                gc = 1 + 4.0 * np.clip(frac - 0.6, 0, None) / 0.4 * fault.intensity
                mult = np.where(on, mult * gc, mult)
                spread = np.where(on & (frac > 0.6), spread + 0.3, spread)
            else:
                mult = np.where(on, mult * (1 + 1.8 * fault.intensity), mult)
                spread = np.where(on, spread + 0.5, spread)
        return mult, spread

    def exception_rate(self, t: np.ndarray, pod: np.ndarray, service: str, operation: str) -> np.ndarray:
        rate = np.zeros_like(t)
        for i, fault in enumerate(self.faults):
            if fault.kind == "code" and fault.service == service and fault.operation == operation:
                rate = np.where(self._active(i, t, pod), 0.6 * fault.intensity, rate)
        return rate

    def network(self, t: np.ndarray, pod: np.ndarray, service: str, rng: np.random.Generator) -> np.ndarray:
        """Extra round-trip time (µs) the caller sees on calls to these pods."""
        extra = np.zeros_like(t)
        for i, fault in enumerate(self.faults):
            if fault.service != service or fault.kind not in ("delay", "loss"):
                continue
            on = self._active(i, t, pod)
            if fault.kind == "delay":
                extra += on * rng.normal(200_000, 30_000, t.shape).clip(50_000) * fault.intensity
            else:
                # One or two retransmission timeouts (200 ms, doubling) for a share of calls.
                hit = on & (rng.random(t.shape) < 0.25 * fault.intensity)
                extra += hit * 200_000 * rng.choice([1, 3], t.shape, p=[0.8, 0.2])
        return extra

    def unreachable(self, t: np.ndarray, pod: np.ndarray, service: str) -> tuple[np.ndarray, np.ndarray]:
        """(down, drained): calls to a pod that is down (killed or OOM-restarting), and among them
        those made after the endpoint was taken out of load balancing (5 s after it went down)."""
        down = np.zeros(t.shape, dtype=bool)
        drained = np.zeros(t.shape, dtype=bool)
        for i, fault in enumerate(self.faults):
            if fault.service != service or fault.kind not in ("pod-kill", "memory"):
                continue
            on_pod = np.isin(pod, self._targets[i])
            if fault.kind == "pod-kill":
                since = t - fault.start_s
                window = (since >= 0) & (since < min(20.0, fault.duration_s))  # restart takes ~20 s
            else:
                cycle = 0.4 * fault.duration_s
                since = (t - fault.start_s) % cycle
                window = self.oom_down(i, t)
            down |= window & on_pod
            drained |= window & on_pod & (since >= 5.0)
        return down, drained
