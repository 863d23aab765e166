"""Failure selection: which traces of the window the agents analyse.

A trace is anomalous when its entry span failed (error status where the operation normally
succeeds) or took far longer than the operation normally does. The most anomalous ones are
taken, round-robin over entry operations so that one busy endpoint cannot crowd out the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.rca.tools import TraceTool

LATENCY_RATIO = 3.0  # entry duration at least this many times the operation's normal median ...
LATENCY_Z = 6.0  # ... and this far above it in robust standard deviations


@dataclass(frozen=True)
class Selected:
    trace_id: str
    entry_operation: str
    reason: str
    severity: float


def select_traces(tool: TraceTool, end_us: int | None = None, max_traces: int = 20) -> list[Selected]:
    frame = tool.frame
    roots = frame[(frame.parent_key == "") & (frame.start_us >= tool.start_us)]
    if end_us is not None:
        roots = roots[roots.start_us < end_us]
    if roots.empty:
        return []
    medians = np.array([tool.op_duration[k].median if k in tool.op_duration else np.nan for k in roots.key])
    scales = np.array([tool.op_duration[k].scale if k in tool.op_duration else np.nan for k in roots.key])
    normal_errors = np.array([tool.op_error_rate.get(k, 0.0) for k in roots.key])
    ratio = roots.duration_us.to_numpy(float) / medians
    z = (roots.duration_us.to_numpy(float) - medians) / scales
    slow = (ratio >= LATENCY_RATIO) & (z >= LATENCY_Z)
    failed = roots.error.to_numpy(bool) & (normal_errors < 0.2)
    severity = np.where(failed, 1000.0, 0.0) + np.nan_to_num(ratio)
    picked = roots.assign(severity=severity, slow=slow, failed=failed)[slow | failed]
    by_op: dict[str, list[Selected]] = {}
    for row in picked.sort_values("severity", ascending=False).itertuples(index=False):
        reason = "entry span failed" if row.failed else f"entry span {row.severity:.0f}x its normal duration"
        by_op.setdefault(row.key, []).append(Selected(row.trace_id, row.key, reason, float(row.severity)))
    out: list[Selected] = []
    queues = sorted(by_op.values(), key=lambda q: -q[0].severity)
    while queues and len(out) < max_traces:
        for queue in list(queues):
            if len(out) >= max_traces:
                break
            out.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return out
