"""Requests entering a system and the traces they leave, generated column-wise with numpy.

Each flow's call tree is walked once per time chunk for *all* of its requests at once: a
node's own time, its children's calls (sequential unless async), timeouts, retries and error
propagation are array operations over the requests that reach it. Only server spans are
emitted; a caller's span contains its children's time plus the network between them, so a
network fault shows in the caller's span and as a gap before the callee's, not in the
callee's own duration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from loadtests.simulator.faults import FaultModel
from loadtests.simulator.topology import Call, Topology

NET_ONE_WAY_US = 250.0  # in-cluster one-way latency
CONNECT_FAIL_US = 1_500.0  # connection refused / reset
PRE_CALL_SHARE = 0.3  # share of an operation's own work done before its first call

STATUS_OK = 0
STATUS_ERROR = 2
# Why a span failed, for the error logs and the span status message.
CAUSE_NONE, CAUSE_EXCEPTION, CAUSE_DOWNSTREAM, CAUSE_TIMEOUT, CAUSE_UNAVAILABLE = range(5)


@dataclass
class SpanTable:
    """Columns of server spans; one row per span. Times are µs since the epoch."""

    trace: np.ndarray  # int64 index into trace_ids
    span_id: np.ndarray  # uint64, never 0
    parent_id: np.ndarray  # uint64, 0 for a root
    op: np.ndarray  # int32 index into SpanTable.operations
    pod: np.ndarray  # int32 index into FaultModel.pod_names
    start_us: np.ndarray  # int64
    duration_us: np.ndarray  # int64
    status: np.ndarray  # int8
    cause: np.ndarray  # int8: CAUSE_*
    failed_call: np.ndarray  # int32: for timeout/downstream/unavailable, the callee op index, else -1
    trace_ids: np.ndarray  # (n_traces, 2) uint64
    operations: list[str] = field(default_factory=list)  # "service/operation"

    def __len__(self) -> int:
        return len(self.span_id)

    @staticmethod
    def concat(tables: list[SpanTable]) -> SpanTable:
        offsets = np.cumsum([0] + [len(t.trace_ids) for t in tables[:-1]])
        return SpanTable(
            trace=np.concatenate([t.trace + o for t, o in zip(tables, offsets, strict=True)]),
            **{
                name: np.concatenate([getattr(t, name) for t in tables])
                for name in (
                    "span_id",
                    "parent_id",
                    "op",
                    "pod",
                    "start_us",
                    "duration_us",
                    "status",
                    "cause",
                    "failed_call",
                    "trace_ids",
                )
            },
            operations=tables[0].operations,
        )


class _Collector:
    def __init__(self) -> None:
        self.columns: dict[str, list[np.ndarray]] = {k: [] for k in _COLUMNS}

    def add(self, **arrays: np.ndarray) -> None:
        for key, value in arrays.items():
            self.columns[key].append(value)

    def table(self, trace_ids: np.ndarray, operations: list[str]) -> SpanTable:
        cols = {k: np.concatenate(v) if v else np.zeros(0, dtype=_COLUMNS[k]) for k, v in self.columns.items()}
        cols = {k: v.astype(_COLUMNS[k]) for k, v in cols.items()}
        return SpanTable(trace_ids=trace_ids, operations=operations, **cols)


_COLUMNS = {
    "trace": np.int64,
    "span_id": np.uint64,
    "parent_id": np.uint64,
    "op": np.int32,
    "pod": np.int32,
    "start_us": np.int64,
    "duration_us": np.int64,
    "status": np.int8,
    "cause": np.int8,
    "failed_call": np.int32,
}


class TrafficGenerator:
    """Generates the spans of a system's traffic, chunk by chunk, under a set of faults."""

    def __init__(self, topology: Topology, faults: FaultModel, seed: int, epoch_s: float, rate_scale: float = 1.0):
        self.topology = topology
        self.faults = faults
        self.rng = np.random.default_rng(seed)
        self.epoch_s = epoch_s
        self.rate_scale = rate_scale
        self.operations = [op.key for s in topology.services.values() for op in s.operations.values()]
        self.op_index = {k: i for i, k in enumerate(self.operations)}
        self._first_pod = {}
        for name, service in topology.services.items():
            self._first_pod[name] = faults.pod_index[service.pods[0]]
        # Random per-run level and per-chunk wobble, so that "normal" differs between runs.
        self._level = float(self.rng.lognormal(0, 0.1))

    def rate_at(self, t: np.ndarray | float) -> np.ndarray | float:
        """Mean requests/s at scenario time ``t``: diurnal shape around the configured rate."""
        topo = self.topology
        phase = 2 * np.pi * (self.epoch_s + np.asarray(t)) / topo.diurnal_period_s
        return topo.rate_per_s * self.rate_scale * self._level * (1 + topo.diurnal_amplitude * np.sin(phase))

    def generate(self, t0: float, t1: float) -> SpanTable:
        """All spans of requests arriving in [t0, t1) seconds of scenario time."""
        rng = self.rng
        wobble = rng.lognormal(0, 0.08)
        mean = float(np.mean(self.rate_at(np.linspace(t0, t1, 8)))) * wobble
        n = rng.poisson(mean * (t1 - t0))
        arrivals = np.sort(rng.uniform(t0, t1, n))
        weights = np.array([f.weight for f in self.topology.flows])
        flow_of = rng.choice(len(weights), n, p=weights / weights.sum())
        trace_ids = rng.integers(1, np.iinfo(np.int64).max, (n, 2), dtype=np.int64).astype(np.uint64)
        out = _Collector()
        for f, flow in enumerate(self.topology.flows):
            idx = np.nonzero(flow_of == f)[0]
            if len(idx):
                starts_us = (self.epoch_s + arrivals[idx]) * 1e6
                self._call(flow.operation, starts_us, idx, np.zeros(len(idx), np.uint64), out)
        return out.table(trace_ids, self.operations)

    # -- the recursive walk -------------------------------------------------------------------

    def _call(
        self, op_key: str, send_us: np.ndarray, trace: np.ndarray, parent: np.ndarray, out: _Collector
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calls ``op_key`` for each request; returns (µs the caller waits, call failed, connection refused)."""
        rng, fm = self.rng, self.faults
        op = self.topology.operation(op_key)
        service = self.topology.services[op.service]
        n = len(send_us)
        t_s = send_us / 1e6 - self.epoch_s
        pod = self._first_pod[op.service] + rng.integers(0, len(service.pods), n)
        down, drained = fm.unreachable(t_s, pod, op.service)
        if len(service.pods) > 1:
            # The load balancer has dropped the dead endpoint: route to the next pod.
            offset = pod - self._first_pod[op.service]
            pod = np.where(drained, self._first_pod[op.service] + (offset + 1) % len(service.pods), pod)
            down &= ~drained
        net_us = rng.gamma(4.0, NET_ONE_WAY_US / 4.0, n) + fm.network(t_s, pod, op.service, rng)
        waited = np.where(down, CONNECT_FAIL_US, 0.0)
        failed = down.copy()

        up = np.nonzero(~down)[0]
        if len(up) == 0:
            return waited, failed, down
        start = send_us[up] + net_us[up] / 2
        t_up, pod_up = t_s[up], pod[up]
        mult, spread = fm.processing(t_up, pod_up, op.service, op.name)
        own = rng.lognormal(np.log(op.latency_ms * 1000.0 * mult), op.sigma + spread)
        exception = rng.random(len(up)) < np.maximum(
            op.error_rate, fm.exception_rate(t_up, pod_up, op.service, op.name)
        )
        span_id = rng.integers(1, np.iinfo(np.int64).max, len(up), dtype=np.int64).astype(np.uint64)
        cause = np.where(exception, CAUSE_EXCEPTION, CAUSE_NONE).astype(np.int8)
        failed_call = np.full(len(up), -1, np.int32)

        cursor = start + own * PRE_CALL_SHARE
        # An exception thrown early skips the remaining calls; model it as "before the calls".
        proceeds = ~exception
        for call in op.calls:
            for _ in range(call.count):
                cursor, cause, failed_call = self._downstream(
                    call, cursor, trace[up], span_id, proceeds, cause, failed_call, out
                )
                proceeds = cause == CAUSE_NONE
        end = cursor + own * (1 - PRE_CALL_SHARE)
        status = np.where(cause != CAUSE_NONE, STATUS_ERROR, STATUS_OK).astype(np.int8)
        out.add(
            trace=trace[up],
            span_id=span_id,
            parent_id=parent[up],
            op=np.full(len(up), self.op_index[op_key], np.int32),
            pod=pod_up.astype(np.int32),
            start_us=start.astype(np.int64),
            duration_us=np.maximum(end - start, 1).astype(np.int64),
            status=status,
            cause=cause,
            failed_call=failed_call,
        )
        waited[up] = end - send_us[up] + net_us[up] / 2
        failed[up] = status == STATUS_ERROR
        return waited, failed, down

    def _downstream(
        self,
        call: Call,
        cursor: np.ndarray,
        trace: np.ndarray,
        span_id: np.ndarray,
        proceeds: np.ndarray,
        cause: np.ndarray,
        failed_call: np.ndarray,
        out: _Collector,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One call site for the requests that reach it, with timeout and retries."""
        made = np.nonzero(proceeds & (self.rng.random(len(cursor)) < call.probability))[0]
        if len(made) == 0:
            return cursor, cause, failed_call
        timeout_us = call.timeout_ms * 1000.0
        elapsed = np.zeros(len(made))
        pending = np.arange(len(made))  # calls still without a good answer
        last_cause = np.zeros(len(made), np.int8)
        for _attempt in range(call.retries + 1):
            waited, failed, refused = self._call(
                call.to, cursor[made][pending] + elapsed[pending], trace[made][pending], span_id[made][pending], out
            )
            timed_out = waited > timeout_us
            elapsed[pending] += np.minimum(waited, timeout_us)
            last_cause[pending] = np.select(
                [timed_out, refused, failed], [CAUSE_TIMEOUT, CAUSE_UNAVAILABLE, CAUSE_DOWNSTREAM], CAUSE_NONE
            )
            pending = pending[failed | timed_out]
            if len(pending) == 0:
                break
        if not call.is_async:
            cursor = cursor.copy()
            cursor[made] += elapsed
        if not (call.optional or call.is_async):  # fire-and-forget failures do not reach the caller
            hit = made[last_cause != CAUSE_NONE]
            cause = cause.copy()
            failed_call = failed_call.copy()
            cause[hit] = last_cause[last_cause != CAUSE_NONE]
            failed_call[hit] = self.op_index[call.to]
        return cursor, cause, failed_call
