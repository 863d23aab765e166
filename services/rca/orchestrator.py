"""The recursive tree of agents: leaves first, each parent once its children have answered.

Agents come from a bounded pool (a thread pool: LLM calls wait on the network, so threads
overlap them). A parent is submitted only when its last child finishes, so no worker ever
blocks waiting for another. Each agent has a deadline; one that misses it is replaced by a
placeholder that passes its children's best verdict up, and the case as a whole has a
deadline after which whatever finished is the (partial) result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from services.rca.agents import AgentResult, DedicatedAgent, Reasoner, Toolbox
from services.rca.tools import Span


@dataclass
class _Node:
    agent: DedicatedAgent
    parent: str | None
    pending: int
    child_results: list[AgentResult] = field(default_factory=list)


@dataclass
class TreeRun:
    results: dict[str, AgentResult]  # by span id
    roots: list[str]
    timed_out: int
    partial: bool
    wall_ms: float


def placeholder(node: _Node, elapsed_ms: float) -> AgentResult:
    """A timed-out agent: its children's best verdict goes up in its place."""
    span = node.agent.span
    best = max((r.verdict for r in node.child_results), key=lambda v: v.get("confidence", 0.0), default=None)
    verdict = {
        "span_id": span.span_id,
        "service": span.service,
        "local_root_cause": best["local_root_cause"] if best else "",
        "fault_type": best.get("fault_type", "unknown") if best else "unknown",
        "confidence": round(0.8 * best["confidence"], 3) if best else 0.0,
        "reason": "agent timed out; passing up its children's best verdict",
    }
    own: dict[str, Any] = {
        "span_id": span.span_id,
        "service": span.service,
        "pod": span.pod,
        "is_abnormal": False,
        "self_score": 0.0,
        "key_symptoms": ["timed out"],
        "hypothesis": "",
        "suspects": [],
    }
    return AgentResult(span, own, verdict, [c.span_id for c in node.agent.children], elapsed_ms, timed_out=True)


def run_tree(
    trees: list[tuple[list[Span], dict[str, list[Span]]]],
    tools: Toolbox,
    reasoner: Reasoner,
    max_workers: int = 8,
    agent_deadline_s: float = 30.0,
    case_deadline_s: float = 120.0,
    on_result: Callable[[AgentResult, int, int], None] | None = None,
) -> TreeRun:
    """Runs one agent per span of every tree (roots, children by parent id)."""
    began = time.monotonic()
    nodes: dict[str, _Node] = {}
    roots: list[str] = []

    def add(span: Span, parent: str | None, children: dict[str, list[Span]]) -> None:
        kids = children.get(span.span_id, [])
        nodes[span.span_id] = _Node(DedicatedAgent(span, kids, tools, reasoner), parent, len(kids))
        for kid in kids:
            add(kid, span.span_id, children)

    for tree_roots, children in trees:
        for root in tree_roots:
            roots.append(root.span_id)
            add(root, None, children)

    results: dict[str, AgentResult] = {}
    started: dict[str, float] = {}
    running: dict[Future[AgentResult], str] = {}
    timed_out = 0
    partial = False
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rca-agent")

    def task(span_id: str) -> AgentResult:
        started[span_id] = time.monotonic()
        node = nodes[span_id]
        return node.agent.run([r.verdict for r in node.child_results])

    closing = False

    def submit(span_id: str) -> None:
        if not closing:  # past the case deadline, the bottom-up sweep fills in the rest
            running[pool.submit(task, span_id)] = span_id

    def finish(span_id: str, result: AgentResult) -> None:
        results[span_id] = result
        if on_result is not None:
            on_result(result, len(results), len(nodes))
        parent = nodes[span_id].parent
        if parent is not None:
            pnode = nodes[parent]
            pnode.child_results.append(result)
            pnode.pending -= 1
            if pnode.pending == 0:
                submit(parent)

    try:
        for span_id, node in nodes.items():
            if node.pending == 0:
                submit(span_id)
        while running:
            done, _ = wait(list(running), timeout=0.05, return_when=FIRST_COMPLETED)
            for future in done:
                span_id = running.pop(future)
                try:
                    result = future.result()
                except Exception as error:  # one broken agent must not sink the case
                    result = placeholder(nodes[span_id], 0.0)
                    result.verdict["reason"] = f"agent failed: {type(error).__name__}: {error}"
                finish(span_id, result)
            now = time.monotonic()
            case_over = now - began > case_deadline_s
            for future, span_id in list(running.items()):
                t = started.get(span_id)
                if case_over or (t is not None and now - t > agent_deadline_s):
                    # The thread cannot be interrupted; its late answer is ignored.
                    future.cancel()
                    running.pop(future)
                    timed_out += 1
                    finish(span_id, placeholder(nodes[span_id], (now - t) * 1000 if t else 0.0))
            if case_over:
                partial = closing = True
                # Whatever never started is skipped: each missing parent gets a placeholder too.
                for span_id in _bottom_up(nodes, roots):
                    if span_id not in results:
                        timed_out += 1
                        finish(span_id, placeholder(nodes[span_id], 0.0))
                running.clear()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return TreeRun(results, roots, timed_out, partial or timed_out > 0, (time.monotonic() - began) * 1000)


def _bottom_up(nodes: dict[str, _Node], roots: list[str]) -> list[str]:
    order: list[str] = []
    children: dict[str, list[str]] = {}
    for span_id, node in nodes.items():
        if node.parent is not None:
            children.setdefault(node.parent, []).append(span_id)

    def visit(span_id: str) -> None:
        for kid in children.get(span_id, []):
            visit(kid)
        order.append(span_id)

    for root in roots:
        visit(root)
    return order
