import json
import re

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from loadtests.simulator import agent_text, agents
from loadtests.simulator.agents import FAILURE_TYPES, AgentRun, AgentStep, generate_runs, labels
from services.common import otlp

SYSTEM_TYPES = [
    (system, name) for system in agents.SYSTEMS for name in FAILURE_TYPES if FAILURE_TYPES[name].applies_to(system)
]
# Failures that need something to go wrong first (a review comment to ignore, a slip to leave untested) may
# diverge from their failure-free twin before the failure step.
NEEDS_PRECONDITION = {"ignored_feedback", "premature_termination"}


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [scoped.item for scoped in otlp.iter_spans(otlp.decode_spans(request.SerializeToString()))]


def _encoded(runs: list[AgentRun]) -> list[bytes]:
    return [agents.run_to_otlp(run).SerializeToString() for run in runs]


def _text_fields(request: ExportTraceServiceRequest) -> list[str]:
    found = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list | dict):
            for item in value.values() if isinstance(value, dict) else value:
                walk(item)

    for scoped in otlp.iter_spans(request):
        walk(scoped.resource)
        walk(otlp.attributes(scoped.item.attributes))
        found += [scoped.scope, scoped.item.name, scoped.item.status.message]
    return found


def _first_divergence(run: AgentRun, twin: AgentRun) -> int:
    def key(step: AgentStep) -> tuple:
        return step.agent, step.operation, step.tool, step.input_text, step.output_text, step.received_from

    pairs = zip(run.steps, twin.steps, strict=False)
    return next((i for i, (a, b) in enumerate(pairs) if key(a) != key(b)), min(len(run.steps), len(twin.steps)))


def _call(text: str, tool: str) -> dict:
    return json.loads(text.split(f"{tool}(", 1)[1].rsplit(")", 1)[0])


@pytest.fixture(scope="module", params=agents.SYSTEMS)
def runs(request: pytest.FixtureRequest) -> list[AgentRun]:
    return generate_runs(request.param, 60, seed=7)


def test_same_seed_gives_the_same_runs() -> None:
    for system in agents.SYSTEMS:
        assert generate_runs(system, 20, seed=3) == generate_runs(system, 20, seed=3)
        assert generate_runs(system, 20, seed=3) != generate_runs(system, 20, seed=4)
        assert _encoded(generate_runs(system, 5, seed=3)) == _encoded(generate_runs(system, 5, seed=3))


def test_each_run_is_one_trace_with_one_root(runs: list[AgentRun]) -> None:
    for run in runs:
        request = agents.run_to_otlp(run)
        assert otlp.attributes(request.resource_spans[0].resource.attributes) == {
            "service.name": f"mas-{run.system}",
            "gen_ai.system": "faultline-sim",
        }
        spans = _spans(request)
        assert len(spans) == len(run.steps) + 1
        assert {span.trace_id for span in spans} == {run.trace_id}
        by_id = {span.span_id: span for span in spans}
        assert len(by_id) == len(spans) and all(len(span_id) == 8 for span_id in by_id)
        (root,) = [span for span in spans if not span.parent_span_id]
        assert root.name == f"invoke_agent {run.system}-orchestrator"
        for span in spans:
            if span is not root:
                parent = by_id[span.parent_span_id]
                assert parent.start_time_unix_nano <= span.start_time_unix_nano
                assert span.end_time_unix_nano <= parent.end_time_unix_nano


def test_streamed_steps_add_up_to_the_whole_trace(runs: list[AgentRun]) -> None:
    for run in runs:
        whole = {span.span_id: span.SerializeToString() for span in _spans(agents.run_to_otlp(run))}
        requests = agents.run_to_otlp_steps(run)
        assert len(requests) == len(run.steps)
        streamed: dict[bytes, bytes] = {}
        for index, request in enumerate(requests):
            spans = _spans(request)
            assert otlp.attributes(spans[0].attributes)["faultline.step.index"] == index
            streamed |= {span.span_id: span.SerializeToString() for span in spans}
        assert streamed == whole
        assert not _spans(requests[-1])[-1].parent_span_id  # the root arrives when the run ends


def test_step_spans_carry_genai_attributes(runs: list[AgentRun]) -> None:
    for run in runs:
        spans = [span for span in _spans(agents.run_to_otlp(run)) if span.parent_span_id]
        for step, span in zip(run.steps, spans, strict=True):
            attributes = otlp.attributes(span.attributes)
            assert attributes["gen_ai.operation.name"] == step.operation
            assert attributes["gen_ai.agent.name"] == step.agent
            assert attributes["gen_ai.conversation.id"] == run.run_id
            assert attributes["gen_ai.agent.id"]
            assert attributes["gen_ai.request.model"] == step.model
            assert attributes["gen_ai.usage.input_tokens"] == step.input_tokens
            assert attributes["gen_ai.usage.output_tokens"] == step.output_tokens
            assert attributes["faultline.step.index"] == step.index
            assert attributes["faultline.step.received_from"] == list(step.received_from)
            for key, text in (("gen_ai.input.messages", step.input_text), ("gen_ai.output.messages", step.output_text)):
                (message,) = json.loads(attributes[key])
                assert message["parts"] == [{"type": "text", "content": text}]
            if step.operation == "execute_tool":
                assert span.name == f"execute_tool {step.tool}"
                assert attributes["gen_ai.tool.name"] == step.tool
                assert attributes["gen_ai.tool.call.id"].startswith("call_")
            else:
                assert span.name == f"{step.operation} {step.agent}"
                assert step.operation in ("invoke_agent", "chat") and step.input_tokens > 0
            expected = Status.STATUS_CODE_ERROR if step.is_error else Status.STATUS_CODE_UNSET
            assert span.status.code == expected


def test_steps_run_one_after_another_with_realistic_durations(runs: list[AgentRun]) -> None:
    for run in runs:
        for before, after in zip(run.steps, run.steps[1:], strict=False):
            assert before.start_ns + before.duration_ns <= after.start_ns
        for step in run.steps:
            low, high = (0.05, 3.0) if step.tool else (0.5, 8.0)
            assert low * 1e9 <= step.duration_ns <= high * 1e9
    first, second = generate_runs("code", 2, seed=1, start_ns=10**18)
    assert 10**18 <= first.steps[0].start_ns < second.steps[0].start_ns


def test_labels_match_the_injected_failure(runs: list[AgentRun]) -> None:
    for run in runs:
        truth = json.loads(json.dumps(labels(run)))
        assert (truth["run_id"], truth["system"], truth["task"]) == (run.run_id, run.system, run.task)
        assert truth["trace_id"] == run.trace_id.hex()
        assert truth["succeeded"] == (run.failure is None) == run.succeeded
        if run.failure is None:
            assert truth["failure"] is None
            continue
        failure = truth["failure"]
        kind = FAILURE_TYPES[failure["failure_type"]]
        assert kind.applies_to(run.system)
        assert (failure["mast_category"], failure["mast_mode"]) == (kind.mast_category, kind.mast_mode)
        assert run.steps[failure["step"]].agent == failure["agent"]
    failed = sum(run.failure is not None for run in runs)
    assert 0.3 * len(runs) <= failed <= 0.7 * len(runs)


def test_failure_rate_and_types_are_honoured() -> None:
    assert all(run.failure for run in generate_runs("code", 30, seed=2, failure_rate=1.0))
    assert not any(run.failure for run in generate_runs("rca", 30, seed=2, failure_rate=0.0))
    held_in = ["metric_query_error", "round_limit", "incorrect_code"]  # incorrect_code is the other system's
    restricted = generate_runs("rca", 60, seed=2, failure_rate=1.0, failure_types=held_in)
    assert {run.failure.failure_type for run in restricted if run.failure} == {"metric_query_error", "round_limit"}
    with pytest.raises(ValueError, match="unknown failure types"):
        generate_runs("rca", 1, seed=2, failure_types=["typo_error"])
    with pytest.raises(ValueError, match="applies"):
        generate_runs("rca", 1, seed=2, failure_types=["incorrect_code"])


@pytest.mark.parametrize(("system", "failure_type"), SYSTEM_TYPES)
def test_failure_step_departs_from_the_failure_free_twin(system: str, failure_type: str) -> None:
    failed = generate_runs(system, 25, seed=5, failure_rate=1.0, failure_types=[failure_type])
    twins = generate_runs(system, 25, seed=5, failure_rate=0.0)
    exact = 0
    for run, twin in zip(failed, twins, strict=True):
        assert run.task == twin.task and twin.succeeded and not run.succeeded
        step = run.failure.step
        divergence = _first_divergence(run, twin)
        assert divergence <= step
        exact += divergence == step
        if failure_type not in NEEDS_PRECONDITION:
            assert divergence == step
            ours, theirs = run.steps[step], twin.steps[step]
            assert (ours.operation, ours.output_text) != (theirs.operation, theirs.output_text)
    assert exact > 0


def test_failure_steps_carry_the_mistake() -> None:
    """What differs at the failure step is the mistake itself, not just wording."""
    tasks = {task.title.lower(): task for task in agent_text.CODE_TASKS}

    def paired(system: str, failure_type: str) -> list[tuple[AgentRun, AgentRun]]:
        failed = generate_runs(system, 20, seed=9, failure_rate=1.0, failure_types=[failure_type])
        return list(zip(failed, generate_runs(system, 20, seed=9, failure_rate=0.0), strict=True))

    for run, twin in paired("code", "decomposition_error"):
        task = next(task for title, task in tasks.items() if title in run.task.lower())
        plan, correct_plan = run.steps[0].output_text.lower(), twin.steps[0].output_text.lower()
        assert all(req.lower() in correct_plan for req in task.requirements)
        assert not all(req.lower() in plan for req in task.requirements)
    for run, _ in paired("code", "incorrect_code"):
        task = next(task for title, task in tasks.items() if title in run.task.lower())
        assert task.bug[1] in run.steps[run.failure.step].output_text
    for run, twin in paired("rca", "metric_query_error"):
        query = _call(run.steps[run.failure.step].output_text, "query_metrics")["query"]
        # the twin may rule out a neighbour first; its last query is the one on the suspect
        correct = [json.loads(step.input_text)["query"] for step in twin.steps if step.tool == "query_metrics"][-1]
        assert _selector(query) != _selector(correct)
    for run, twin in paired("rca", "critical_trace_miss"):
        asked, correct = (_call(r.steps[run.failure.step].output_text, "query_traces") for r in (run, twin))
        differing = {key for key in asked.keys() | correct.keys() if asked.get(key) != correct.get(key)}
        assert differing - {"end"}, "the query itself must change, not only its random end"
    for run, twin in paired("rca", "localisation_error"):
        assert _named_service(run.steps[-1].output_text) != _named_service(twin.steps[-1].output_text)


def _selector(query: str) -> tuple[str, dict[str, str]]:
    metric = re.search(r"\(([a-z_]+)\{", query)
    return (metric.group(1) if metric else ""), dict(re.findall(r'(\w+)=~?"([^"]*)"', query))


def _named_service(report: str) -> str:
    found = re.search(r'(?:service: |"service": "|caused by )([a-z-]+)', report)
    assert found, report
    return found.group(1)


def test_spans_do_not_leak_the_ground_truth() -> None:
    forbidden = [*FAILURE_TYPES, "inject", "failure_type"]
    for system in agents.SYSTEMS:
        for run in generate_runs(system, 60, seed=11, failure_rate=1.0):
            text = "\n".join(_text_fields(agents.run_to_otlp(run))).lower()
            assert not [word for word in forbidden if word in text], run.failure


def test_surface_signals_do_not_separate_success_from_failure() -> None:
    code = generate_runs("code", 200, seed=13)
    rca = generate_runs("rca", 200, seed=13)

    def share(runs: list[AgentRun], succeeded: bool, signal) -> float:
        group = [run for run in runs if run.succeeded == succeeded]
        return sum(map(signal, group)) / len(group)

    def red_tests(run: AgentRun) -> bool:
        return any(step.tool == "run_tests" and step.is_error for step in run.steps)

    def extra_coding_round(run: AgentRun) -> bool:
        return sum(step.agent == "coder" for step in run.steps) > 1

    def tool_error_or_extra_round(run: AgentRun) -> bool:
        return any(step.is_error for step in run.steps) or sum(step.agent == "coordinator" for step in run.steps) > 2

    assert 0.1 < share(code, True, red_tests) < 0.9
    assert 0.1 < share(code, True, extra_coding_round) < 0.9
    assert share(code, False, red_tests) < 0.9  # some failures never show a red test
    assert 0.1 < share(rca, True, tool_error_or_extra_round) < 0.9


def test_task_catalogue_is_consistent() -> None:
    assert len(agent_text.CODE_TASKS) >= 30
    for task in agent_text.CODE_TASKS:
        assert task.code.count(task.bug[0]) == 1, task.title
        assert len(task.tests) == len(task.requirements) and 0 <= task.bug_test < len(task.tests)
        assert 0 <= task.distortion[0] < len(task.requirements)
        compile(task.code, task.module, "exec")
        compile(task.code.replace(*task.bug), task.module, "exec")
