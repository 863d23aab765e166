"""Per-pod and per-service metrics at a fixed step, derived from the spans plus a resource model.

Request metrics (rate, errors, latency percentiles) are measured from the generated spans,
so they agree with the traces. Resource metrics follow load (CPU per request, sockets by
Little's law, network bytes per request) with autocorrelated noise, plus each fault's
signature (see :mod:`loadtests.simulator.faults`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loadtests.simulator.faults import FaultModel
from loadtests.simulator.topology import Topology
from loadtests.simulator.traffic import STATUS_ERROR, SpanTable

POD_METRICS = ("cpu", "mem", "diskio", "netrx", "nettx", "socket", "restarts")
SERVICE_METRICS = ("rps", "error", "latency-50", "latency-90", "latency-99")


@dataclass
class MetricFrames:
    """``pods``: one row per (time, pod); ``services``: RCAEval's wide frame (time + <service>_<metric>)."""

    pods: pd.DataFrame
    services: pd.DataFrame


def _ar1(rng: np.random.Generator, n: int, scale: float, phi: float = 0.9) -> np.ndarray:
    """Autocorrelated noise: real utilisation wanders, it is not white."""
    shocks = rng.normal(0, scale * np.sqrt(1 - phi**2), n)
    out = np.empty(n)
    level = rng.normal(0, scale)
    for i in range(n):
        level = phi * level + shocks[i]
        out[i] = level
    return out


class NoiseBank:
    """Per-pod autocorrelated noise for a whole scenario, so that chunks of it join smoothly."""

    def __init__(self, topology: Topology, duration_s: float, seed: int) -> None:
        rng = np.random.default_rng(seed + 7919)
        n = int(np.ceil(duration_s / topology.step_s)) + 1
        scales = {
            "cpu": (0.012, 0.9),
            "mem": (0.02, 0.98),
            "diskio": (8_000, 0.9),
            "net": (0.05, 0.9),
            "socket": (2.0, 0.9),
        }
        self.step = topology.step_s
        self.series = {
            (pod, name): _ar1(rng, n, scale, phi)
            for service in topology.services.values()
            for pod in service.pods
            for name, (scale, phi) in scales.items()
        }
        self.rng = rng

    def get(self, pod: str, name: str, times: np.ndarray) -> np.ndarray:
        series = self.series[(pod, name)]
        return series[np.clip((times // self.step).astype(int), 0, len(series) - 1)]


def build_metrics(
    topology: Topology, faults: FaultModel, spans: SpanTable, t0: int, t1: int, noise: NoiseBank, epoch_s: int
) -> MetricFrames:
    """Metrics for whole seconds [t0, t1) of scenario time (step = topology.step_s)."""
    step = topology.step_s
    times = np.arange(t0, t1, step)
    n = len(times)
    op_service = np.array([k.split("/", 1)[0] for k in spans.operations])
    bucket = ((spans.start_us / 1e6 - epoch_s - t0) // step).astype(np.int64)
    keep = (bucket >= 0) & (bucket < n)
    pods_rows = []
    service_cols: dict[str, np.ndarray] = {}
    for name, service in topology.services.items():
        svc_mask = keep & (op_service[spans.op] == name)
        svc_bucket = bucket[svc_mask]
        durations = spans.duration_us[svc_mask] / 1e6
        errors = spans.status[svc_mask] == STATUS_ERROR
        count = np.bincount(svc_bucket, minlength=n)
        service_cols[f"{name}_rps"] = count / step
        service_cols[f"{name}_error"] = np.bincount(svc_bucket, weights=errors, minlength=n) / step
        frame = pd.DataFrame({"b": svc_bucket, "d": durations})
        quantiles = frame.groupby("b")["d"].quantile([0.5, 0.9, 0.99]).unstack()
        for q, label in ((0.5, "latency-50"), (0.9, "latency-90"), (0.99, "latency-99")):
            column = np.full(n, np.nan)
            if len(quantiles):
                column[quantiles.index.to_numpy()] = quantiles[q].to_numpy()
            service_cols[f"{name}_{label}"] = pd.Series(column).ffill().bfill().fillna(0).to_numpy()

        pod_sums = {m: np.zeros(n) for m in POD_METRICS}
        for pod in service.pods:
            p = faults.pod_index[pod]
            pod_mask = svc_mask & (spans.pod == p)
            rps = np.bincount(bucket[pod_mask], minlength=n) / step
            mean_s = np.bincount(bucket[pod_mask], weights=spans.duration_us[pod_mask] / 1e6, minlength=n)
            mean_s = np.divide(mean_s, rps * step, out=np.zeros(n), where=rps > 0)
            values = _pod_resources(topology, faults, name, p, times.astype(float), rps, mean_s, noise)
            pods_rows.append(pd.DataFrame({"time": times + epoch_s, "service": name, "pod": pod, **values}))
            for m in POD_METRICS:
                pod_sums[m] += values[m]
        for m in POD_METRICS:
            service_cols[f"{name}_{m}"] = pod_sums[m]
    services = pd.DataFrame({"time": (times + epoch_s).astype(np.int64), **service_cols})
    return MetricFrames(pods=pd.concat(pods_rows, ignore_index=True), services=services)


def _pod_resources(
    topology: Topology,
    faults: FaultModel,
    service_name: str,
    pod: int,
    t: np.ndarray,
    rps: np.ndarray,
    latency_s: np.ndarray,
    noise: NoiseBank,
) -> dict[str, np.ndarray]:
    service = topology.services[service_name]
    rng = noise.rng
    n = len(t)
    pods = np.full(n, pod)
    name = faults.pod_names[pod]
    cpu = service.cpu_base + service.cpu_per_rps * rps + noise.get(name, "cpu", t)
    mem = service.memory_mb * 1e6 * (1 + noise.get(name, "mem", t))
    kind_io = {"db": 40_000.0, "cache": 2_000.0, "queue": 8_000.0}.get(service.kind, 500.0)
    diskio = np.abs(kind_io * rps + 20_000 + noise.get(name, "diskio", t))
    netrx = np.abs(1_400 * rps * (1 + noise.get(name, "net", t)))
    nettx = np.abs(3_800 * rps * (1 + noise.get(name, "net", t)))
    extra_net_s = faults.network(t, pods, service_name, rng) / 1e6
    # Open sockets: a base pool plus in-flight requests (Little's law); gRPC multiplexes many
    # requests per connection, so only a small share of the concurrency shows as sockets.
    socket = 8 + 0.1 * rps * (latency_s + extra_net_s) + np.abs(noise.get(name, "socket", t))
    restarts = np.zeros(n)
    for i, fault in enumerate(faults.faults):
        if fault.service != service_name:
            continue
        targeted = bool(np.isin(pod, faults.pods_of(fault)))
        # The restart counter only grows: it still counts after the fault has ended.
        if targeted and fault.kind == "pod-kill":
            restarts += t >= fault.start_s
        elif targeted and fault.kind == "memory":
            restarts += faults.oom_count(i, t)
        on = (t >= fault.start_s) & (t < fault.end_s) & targeted
        if not on.any():
            continue
        if fault.kind == "cpu":
            cpu = np.where(on, np.minimum(0.97, cpu + 0.75 * fault.intensity) + rng.normal(0, 0.01, n), cpu)
        elif fault.kind == "memory":
            frac = faults.memory_fraction(i, t)
            mem = np.where(on, mem + frac * 1.5 * service.memory_mb * 1e6 * fault.intensity, mem)
            cpu = np.where(on & (frac > 0.6), cpu + 0.25 * (frac - 0.6) / 0.4, cpu)
        elif fault.kind == "disk":
            diskio = np.where(on, diskio + rng.normal(60e6, 6e6, n) * fault.intensity, diskio)
            cpu = np.where(on, cpu + 0.08, cpu)
        elif fault.kind == "loss":
            # Retransmissions: bytes on the wire rise while useful throughput drops.
            nettx = np.where(on, nettx * 1.15, nettx)
            netrx = np.where(on, netrx * 0.95, netrx)
        elif fault.kind == "pod-kill":
            down = (t >= fault.start_s) & (t < fault.start_s + min(20.0, fault.duration_s))
            start_up = down | ((t >= fault.start_s + 20) & (t < fault.start_s + 35))
            cpu = np.where(down, 0, np.where(start_up, cpu + 0.3, cpu))
            mem = np.where(down, 0, np.where(start_up, mem * 0.6, mem))
            for arr in (diskio, netrx, nettx, socket):
                arr[down] = 0
    for i, fault in enumerate(faults.faults):
        if fault.kind == "memory" and fault.service == service_name:
            oom = faults.oom_down(i, t) & np.isin(pod, faults.pods_of(fault))
            for arr in (cpu, mem, diskio, netrx, nettx, socket):
                arr[oom] = 0
    return {
        "cpu": np.clip(cpu, 0, 1) * 100,  # percent of the pod's CPU limit
        "mem": np.clip(mem, 0, None),  # bytes
        "diskio": diskio,  # bytes/s
        "netrx": netrx,
        "nettx": nettx,
        "socket": np.round(socket),
        "restarts": restarts,
    }
