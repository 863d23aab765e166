"""Runs of multi-agent LLM systems ("MAS traces") with injected failures and their ground truth.

Training and evaluation data for a step-wise failure detector (EAGER, arXiv 2603.21522): each run is
a sequence of agent steps (LLM calls and tool calls) with text, timing and token counts, encoded as
OpenTelemetry GenAI spans. Two systems are simulated:

- ``code``: planner / coder / tester / reviewer, AutoGen-Code style, rounds until approval;
- ``rca``: an RCLAgent-style team localising the root-cause service of an Online Boutique incident.

A failure run carries exactly one failure, placed at one agent's step; the step itself differs from
what a correct step would say and later steps show the consequences. Success runs have their own
noise (a failing first test run, a flaky test, a tool timeout, an extra round), so surface signals
such as "a test failed" do not separate the two.

Each run draws its scenario and its failure from two separate seeded streams. The same seed with
``failure_rate=0`` therefore gives each failure run's failure-free twin, identical up to the failure
step, unless the failure needed a precondition (a review comment to ignore, a slip to leave
untested) that the twin did not have by chance.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from loadtests.simulator import agent_text as txt
from services.common.otlp import to_key_values

_NS = 1_000_000_000
_MINUTE_NS = 60 * _NS

SYSTEMS = ("code", "rca")
DEFAULT_START_NS = int(datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()) * _NS
RUN_INTERVAL_S = 300  # runs start five minutes apart, so one run's length never shifts the next run's text


@dataclass(frozen=True)
class FailureType:
    name: str
    system: str  # "code", "rca" or "both"
    mast_category: str
    mast_mode: str
    description: str

    def applies_to(self, system: str) -> bool:
        return self.system in (system, "both")


def _failure_type(name: str, system: str, mode: str, description: str) -> FailureType:
    category = {"1": "specification", "2": "inter-agent misalignment", "3": "task verification"}[mode[0]]
    return FailureType(name, system, category, mode, description)


FAILURE_TYPES: dict[str, FailureType] = {
    ft.name: ft
    for ft in (
        _failure_type(
            "decomposition_error",
            "code",
            "1.1 disobey task specification",
            "the planner's subtasks drop or distort one of the task's requirements",
        ),
        _failure_type(
            "incorrect_code",
            "code",
            "3.3 incorrect verification",
            "the coder's code has a subtle bug that the tests miss, or that is approved although a test fails",
        ),
        _failure_type(
            "ignored_feedback",
            "code",
            "2.5 ignored other agent's input",
            "the coder claims to address or waves off the reviewer's requested change but does not make it",
        ),
        _failure_type(
            "premature_termination",
            "code",
            "3.1 premature termination",
            "the reviewer approves before any test has run, letting a mistake through",
        ),
        _failure_type(
            "round_limit",
            "both",
            "1.5 unaware of termination conditions",
            "the agent that should end the loop keeps asking for more (new changes, the same checks again) "
            "until the round limit stops the run without a result",
        ),
        _failure_type(
            "critical_trace_miss",
            "rca",
            "3.2 no or incomplete verification",
            "the trace agent's query (window, operation, filter or ordering) misses the traces holding the evidence",
        ),
        _failure_type(
            "metric_query_error",
            "rca",
            "2.6 reasoning-action mismatch",
            "the metrics agent queries the wrong metric, service or label for the suspect it means to check",
        ),
        _failure_type(
            "information_withholding",
            "rca",
            "2.4 information withholding",
            "an agent's tool output holds the key finding but its message to the coordinator leaves it out",
        ),
        _failure_type(
            "localisation_error",
            "rca",
            "2.5 ignored other agent's input",
            "the reporter names a different service than the consolidated evidence points to",
        ),
    )
}


@dataclass(frozen=True)
class AgentStep:
    """One LLM call or tool call of one agent.

    ``operation`` is "invoke_agent" for the call that opens an agent's turn, "chat" for a further LLM
    call in the same turn and "execute_tool" for a tool call. ``role`` is the chat role of the
    output ("assistant" or "tool"). ``received_from`` names whose output the input holds: agents,
    "user", or a tool for the call that reads that tool's result.
    """

    index: int
    agent: str
    role: str
    operation: str
    tool: str | None
    input_text: str
    output_text: str
    received_from: tuple[str, ...]
    start_ns: int
    duration_ns: int
    is_error: bool
    input_tokens: int
    output_tokens: int
    model: str


@dataclass(frozen=True)
class InjectedFailure:
    failure_type: str
    agent: str
    step: int
    mast_category: str
    mast_mode: str
    description: str  # what went wrong in this run


@dataclass(frozen=True)
class AgentRun:
    run_id: str
    system: str
    task: str
    steps: tuple[AgentStep, ...]
    failure: InjectedFailure | None
    succeeded: bool
    trace_id: bytes  # 16 bytes


def generate_runs(
    system: str,
    n: int,
    seed: int,
    failure_rate: float = 0.5,
    failure_types: Sequence[str] | None = None,
    start_ns: int | None = None,
) -> list[AgentRun]:
    """``n`` runs of ``system``; about ``failure_rate`` of them carry one failure of ``failure_types``.

    ``failure_types`` (default: all of the system's) restricts what is injected, e.g. to hold types
    out for evaluation; names of the other system's types are ignored. Runs start
    ``RUN_INTERVAL_S`` apart from ``start_ns`` (default: a fixed date, so output depends on the
    seed only).
    """
    if system not in _SESSIONS:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate}")
    allowed = _allowed_failures(system, failure_types)
    if failure_rate > 0 and not allowed:
        raise ValueError(f"none of {list(failure_types or ())} applies to the {system} system")
    base_ns = DEFAULT_START_NS if start_ns is None else start_ns
    runs = []
    for index in range(n):
        stream = f"faultline-mas/{system}/{seed}/{index}"
        rng, frng = random.Random(stream), random.Random(stream + "/failure")
        fault = frng.choice(allowed) if frng.random() < failure_rate else None
        trace_id = rng.randbytes(16)
        run_start = base_ns + index * RUN_INTERVAL_S * _NS + rng.randrange(60 * _NS)
        session = _SESSIONS[system](rng, frng, fault, run_start)
        task = session.play()
        runs.append(
            AgentRun(
                run_id=f"{system}-{trace_id[:6].hex()}",
                system=system,
                task=task,
                steps=tuple(session.transcript.steps),
                failure=session.failure,
                succeeded=session.failure is None,
                trace_id=trace_id,
            )
        )
    return runs


def labels(run: AgentRun) -> dict:
    """The run's ground truth, JSON-serialisable; ``trace_id`` (hex) joins it to the spans."""
    return {
        "run_id": run.run_id,
        "trace_id": run.trace_id.hex(),
        "system": run.system,
        "task": run.task,
        "succeeded": run.succeeded,
        "failure": asdict(run.failure) if run.failure else None,
    }


def _allowed_failures(system: str, failure_types: Sequence[str] | None) -> list[str]:
    names = list(FAILURE_TYPES) if failure_types is None else list(failure_types)
    unknown = [name for name in names if name not in FAILURE_TYPES]
    if unknown:
        raise ValueError(f"unknown failure types {unknown}; known: {sorted(FAILURE_TYPES)}")
    return [name for name in names if FAILURE_TYPES[name].applies_to(system)]


# --- recording steps -------------------------------------------------------------------------------


def _tokens(text: str) -> int:
    return max(1, round(len(text) / 4))  # about four characters per token for English and code


class _Transcript:
    """The steps of one run on a running clock, with token counts and LLM-like durations."""

    def __init__(
        self, rng: random.Random, start_ns: int, models: dict[str, str], prompt_tokens: dict[str, int], shared: bool
    ) -> None:
        self.rng, self.clock, self.models, self.prompt_tokens = rng, start_ns, models, prompt_tokens
        self.shared = shared  # a group chat: every LLM call sees everything said so far
        self.steps: list[AgentStep] = []
        self._history_tokens = 0

    @property
    def next_index(self) -> int:
        return len(self.steps)

    def llm(self, agent: str, operation: str, input_text: str, output_text: str, received_from: tuple[str, ...]) -> str:
        input_tokens = self.prompt_tokens[agent] + _tokens(input_text) + (self._history_tokens if self.shared else 0)
        output_tokens = _tokens(output_text)
        # decoding dominates an LLM call: tens of ms per output token, plus prefill of the prompt
        seconds = 0.3 + output_tokens * self.rng.uniform(0.012, 0.03) + input_tokens * 2e-5
        self._add(agent, operation, None, input_text, output_text, received_from, seconds, False, input_tokens)
        return output_text

    def tool(self, agent: str, tool: str, arguments: str, result: str, seconds: float, is_error: bool = False) -> str:
        self._add(agent, "execute_tool", tool, arguments, result, (agent,), seconds, is_error, 0)
        return result

    def _add(
        self,
        agent: str,
        operation: str,
        tool: str | None,
        input_text: str,
        output_text: str,
        received_from: tuple[str, ...],
        seconds: float,
        is_error: bool,
        input_tokens: int,
    ) -> None:
        self.clock += self.rng.randrange(5_000_000, 60_000_000)  # the orchestrator's hand-off
        duration_ns = int(min(max(seconds, 0.05 if tool else 0.5), 3.0 if tool else 8.0) * _NS)
        self.steps.append(
            AgentStep(
                index=len(self.steps),
                agent=agent,
                role="tool" if tool else "assistant",
                operation=operation,
                tool=tool,
                input_text=input_text,
                output_text=output_text,
                received_from=received_from,
                start_ns=self.clock,
                duration_ns=duration_ns,
                is_error=is_error,
                input_tokens=input_tokens,
                output_tokens=0 if tool else _tokens(output_text),
                model=self.models[agent],
            )
        )
        self.clock += duration_ns
        self._history_tokens += _tokens(output_text)


class _Session:
    """One run being played: the scenario stream ``rng``, the failure stream ``frng``, the transcript."""

    models: ClassVar[dict[str, str]]
    prompt_tokens: ClassVar[dict[str, int]]
    shared_history: ClassVar[bool]

    def __init__(self, rng: random.Random, frng: random.Random, fault: str | None, start_ns: int) -> None:
        self.rng, self.frng, self.fault = rng, frng, fault
        self.fault_type = FAILURE_TYPES[fault] if fault else None
        self.transcript = _Transcript(rng, start_ns, self.models, self.prompt_tokens, self.shared_history)
        self.failure: InjectedFailure | None = None

    def play(self) -> str:
        """Record the run's steps; returns the task as the user stated it."""
        raise NotImplementedError

    def mark(self, agent: str, description: str) -> None:
        """The next step recorded is where the failure happens."""
        ft, step = self.fault_type, self.transcript.next_index
        assert ft is not None, "only a failure run has a failure step"
        self.failure = InjectedFailure(ft.name, agent, step, ft.mast_category, ft.mast_mode, description)

    def say(self, bank: Sequence[str], **slots: object) -> str:
        return txt.say(self.rng, bank, **slots)

    def _fails_here(self, failure_type: str) -> bool:
        """This run's failure is ``failure_type`` and has not happened yet."""
        return self.fault == failure_type and self.failure is None


# --- the coding system -----------------------------------------------------------------------------

GENERIC_TESTS = ("test_public_api", "test_module_imports_cleanly", "test_no_global_state", "test_type_annotations")


@dataclass(frozen=True)
class _Slip:
    """An ordinary first-draft mistake that the tests catch and the coder then fixes."""

    module: str
    code: str
    error: str
    at_collection: bool  # the suite fails to import instead of failing test by test


@dataclass
class _Draft:
    """The coder's current version of the module."""

    module: str
    code: str
    defect: str | None = None  # "slip" or "bug" while the code has one
    head: list[str] = field(default_factory=list)  # lines added on review, above the code
    tail: list[str] = field(default_factory=list)  # stubs added for scope requests, below it

    def listing(self) -> str:
        return "\n".join([f"```python\n# {self.module}", *self.head, self.code, *self.tail, "```"])


@dataclass
class _Review:
    """What the reviewer asked for last, and the test output it was looking at."""

    kind: str  # "fix", "nit" or "scope"
    message: str
    test: str = ""
    stub: str = ""


class _CodeSession(_Session):
    models: ClassVar[dict[str, str]] = {
        "planner": "gpt-4o-2024-08-06",
        "coder": "gpt-4o-2024-08-06",
        "tester": "gpt-4o-mini-2024-07-18",
        "reviewer": "gpt-4o-2024-08-06",
    }
    prompt_tokens: ClassVar[dict[str, int]] = {"planner": 420, "coder": 610, "tester": 380, "reviewer": 450}
    shared_history = True

    def play(self) -> str:
        rng, frng = self.rng, self.frng
        task = rng.choice(txt.CODE_TASKS)
        request = self._request(task)
        # natural variation, drawn before anything else so that a failure run and its twin share it
        slip = self._slip(task, rng) if rng.random() < 0.3 else None
        nit = rng.choice(txt.REVIEW_NITS) if rng.random() < 0.35 else None
        flaky = rng.random() < 0.12
        suite = [*task.tests, *rng.sample(GENERIC_TESTS, rng.randint(0, 2))]
        max_rounds = rng.choice((4, 5, 6))
        # failures that need something to go wrong first get it from the failure stream
        if self.fault == "premature_termination" and slip is None:
            slip = self._slip(task, frng)
        if self.fault == "ignored_feedback" and nit is None:
            nit = frng.choice(txt.REVIEW_NITS)

        plan, plan_points, lost = self._plan(task, request)
        caught_gap = lost is not None and frng.random() < 0.5  # else the tester writes tests from the plan
        if lost is not None and not caught_gap:
            suite.remove(task.tests[task.requirements.index(lost)])
        gap_test = task.tests[task.requirements.index(lost)] if caught_gap and lost else None
        nit_request = nit[0] if nit else ""
        nit_line = nit[1].format(symbol=task.symbol, Title=task.title[0].upper() + task.title[1:]) if nit else ""

        draft = _Draft(task.module, task.code)
        bug_visible = frng.random() < 0.6  # else the bug sits in a case the tests do not exercise
        nit_asked = ignored = False
        review: _Review | None = None
        tests_failed = False
        scopes = list(txt.REVIEW_SCOPE)
        rng.shuffle(scopes)
        for round_no in range(1, max_rounds + 1):
            # --- coder
            if review is None:
                inputs, received = plan, ("planner",)
                if self.fault == "incorrect_code":
                    draft.code, draft.defect = task.code.replace(*task.bug), "bug"
                    self.mark("coder", f"the code has `{task.bug[1]}` where `{task.bug[0]}` is needed")
                elif slip:
                    draft = _Draft(slip.module, slip.code, "slip")
                opener = self.say(txt.CODER_OPENERS, symbol=task.symbol, module=draft.module)
                covers = self.say(txt.CODER_COVERS, points="; ".join(plan_points)) if rng.random() < 0.5 else ""
                closing = f"{covers} {self.say(txt.CODER_HANDOFF)}".strip()
            else:
                inputs, received = review.message, ("tester", "reviewer") if tests_failed else ("reviewer",)
                closing = self.say(txt.CODER_HANDOFF)
                if review.kind == "fix" and draft.defect == "slip":
                    draft = _Draft(task.module, task.code)
                    opener = self.say(txt.CODER_FIX_SLIP)
                elif review.kind == "fix" and draft.defect == "bug":
                    opener = self.say(txt.CODER_FIX_BUG, test=review.test)  # claims a fix, changes nothing
                elif review.kind == "fix":
                    opener = self.say(txt.CODER_DEFEND_PLAN, test=review.test)
                elif review.kind == "nit" and self.fault == "ignored_feedback":
                    if not ignored:
                        self.mark("coder", f"the reviewer asked for {nit_request}; the coder did not add it")
                        ignored = True
                    opener = self.say(txt.CODER_APPLY_NIT, nit=nit_request)  # claims a change it does not make
                elif review.kind == "nit":
                    draft.head.append(nit_line)
                    opener = self.say(txt.CODER_APPLY_NIT, nit=nit_request)
                else:
                    draft.tail.append(review.stub)
                    opener = self.say(txt.CODER_SCOPE)
            code_message = self.transcript.llm(
                "coder", "invoke_agent", inputs, f"{opener}\n{draft.listing()}\n{closing}".strip(), received
            )

            if self.fault == "premature_termination":
                self.mark("reviewer", "the reviewer approved the code before any test had run")
                self.transcript.llm("reviewer", "invoke_agent", code_message, self.say(txt.REVIEW_APPROVE), ("coder",))
                break

            # --- tester
            failures: dict[str, str] = {}
            collect_error = None
            if draft.defect == "slip" and slip and slip.at_collection:
                collect_error = slip.error
            elif draft.defect == "slip" and slip:
                failures = dict.fromkeys(task.tests, slip.error)
            elif draft.defect == "bug" and bug_visible:
                failures = {task.tests[task.bug_test]: task.bug_error}
            elif gap_test:  # the acceptance test of the requirement the plan lost
                failures = {gap_test: f"AssertionError: assert {rng.randint(0, 9)} == {rng.randint(10, 99)}"}
            flaky_now = flaky and not failures and not collect_error
            flaky = flaky and not flaky_now
            summary = self._run_tests(task, suite, failures, collect_error, code_message, flaky_now)
            tests_failed = bool(failures or collect_error)

            # --- reviewer
            reviewer_input = f"{code_message}\n\n{summary}"
            first_test, first_error = next(iter(failures.items()), (task.test_file, collect_error or ""))
            if tests_failed and draft.defect == "bug" and round_no >= 2:
                waiver = self.say(txt.REVIEW_WAIVE, test=first_test)
                self.transcript.llm("reviewer", "invoke_agent", reviewer_input, waiver, ("coder", "tester"))
                break
            if tests_failed:
                message = self.say(txt.REVIEW_FIX, test=first_test, error=first_error)
                review = _Review("fix", f"{message}\n\n{summary}", test=first_test)
            elif ignored and frng.random() < 0.5:
                message = self.say(txt.REVIEW_REPEAT_NIT, nit=nit_request)
                review = _Review("nit", message)
            elif nit and not nit_asked and not ignored:
                nit_asked = True
                message = f"{self.say(txt.REVIEW_REQUEST_OPENERS)} {self.say(txt.REVIEW_ASK, idea=nit_request)}"
                review = _Review("nit", message)
            elif self.fault == "round_limit":
                if self.failure is None:
                    self.mark("reviewer", "tests pass and the task is done, yet the reviewer asks for new work")
                idea, stub = scopes.pop()
                stem = task.module.rsplit("/", 1)[-1].removesuffix(".py")
                message = f"{self.say(txt.REVIEW_REQUEST_OPENERS)} {self.say(txt.REVIEW_ASK, idea=idea)}"
                review = _Review("scope", message, stub=stub.format(fn=stem, FN=stem.upper(), symbol=task.symbol))
            else:
                approval = self.say(txt.REVIEW_APPROVE)
                if rng.random() < 0.3:
                    idea = scopes[-1][0]
                    approval += " " + self.say(txt.REVIEW_FOLLOW_UP, idea=idea, Idea=idea[0].upper() + idea[1:])
                self.transcript.llm("reviewer", "invoke_agent", reviewer_input, approval, ("coder", "tester"))
                break
            self.transcript.llm("reviewer", "invoke_agent", reviewer_input, message, ("coder", "tester"))
        return request

    def _request(self, task: txt.CodeTask) -> str:
        rng = self.rng
        ticket = f"{rng.choice(('PLAT', 'PAY', 'OPS', 'CORE', 'WEB'))}-{rng.randint(100, 9999)}"
        title = task.title[0].upper() + task.title[1:]
        opener = self.say(
            txt.TASK_OPENERS, Title=title, title=task.title, project=rng.choice(txt.PROJECTS), ticket=ticket
        )
        criteria = "\n".join(f"- {req}" for req in task.requirements)
        return f"{opener}\n{rng.choice(txt.REQUIREMENTS_HEADERS)}\n{criteria}"

    def _plan(self, task: txt.CodeTask, request: str) -> tuple[str, list[str], str | None]:
        """The planner's step; returns the plan, the requirements as planned and the one it lost."""
        rng, frng = self.rng, self.frng
        points = list(task.requirements)
        if rng.random() < 0.3:
            rng.shuffle(points)
        extras = rng.sample(txt.PLAN_EXTRAS, rng.randint(0, 2))
        lost = None
        if self.fault == "decomposition_error":
            if frng.random() < 0.5:
                index, misread = task.distortion
                lost = task.requirements[index]
                points[points.index(lost)] = misread
                self.mark("planner", f"the plan turns '{lost}' into '{misread}'")
            else:
                lost = frng.choice(task.requirements[1:])  # the first is the task's core: no planner drops it
                points.remove(lost)
                # a harmless extra item keeps the plan as long as a correct one
                extras.append(frng.choice([e for e in txt.PLAN_EXTRAS if e not in extras]))
                self.mark("planner", f"the plan leaves out '{lost}'")
        slots = _slots(task)
        items = [
            self.say(txt.PLAN_SETUP, **slots),
            *(self.say(txt.PLAN_ITEM, req=point) for point in points),
            *(extra.format(**slots) for extra in extras),
            self.say(txt.PLAN_CLOSERS, **slots),
        ]
        numbered = "\n".join(f"{i}. {item[0].upper()}{item[1:]}" for i, item in enumerate(items, 1))
        plan = f"{self.say(txt.PLAN_OPENERS, n=len(items), **slots)}\n{numbered}"
        self.transcript.llm("planner", "invoke_agent", request, plan, ("user",))
        return plan, points, lost

    @staticmethod
    def _slip(task: txt.CodeTask, rng: random.Random) -> _Slip:
        imports = [line for line in task.code.splitlines() if line.startswith(("import ", "from "))]
        if imports and rng.random() < 0.6:
            line = rng.choice(imports)
            name = line.split()[1] if line.startswith("import ") else line.split(" import ")[1].split(",")[0]
            code = "\n".join(kept for kept in task.code.splitlines() if kept != line)
            return _Slip(task.module, code, f"NameError: name '{name}' is not defined", at_collection=False)
        folder, _, file = task.module.rpartition("/")
        stem = file.removesuffix(".py")
        wrong = rng.choice((f"{folder}/{stem}s.py", f"{folder}_{stem}.py", f"{folder}/{stem}_impl.py", f"{stem}.py"))
        error = f"ModuleNotFoundError: No module named '{task.import_path}'"
        return _Slip(wrong, task.code, error, at_collection=True)

    def _run_tests(
        self,
        task: txt.CodeTask,
        suite: list[str],
        failures: dict[str, str],
        collect_error: str | None,
        code_message: str,
        flaky: bool,
    ) -> str:
        """The tester's turn: decide to run, run (re-running a flaky timeout once), report."""
        rng, t = self.rng, self.transcript
        arguments = json.dumps({"path": task.test_file, "args": rng.choice((["-q"], ["-q", "-x"], ["-q", "-rf"]))})
        t.llm(
            "tester",
            "invoke_agent",
            code_message,
            f"{self.say(txt.TESTER_RUN, **_slots(task))}\nrun_tests({arguments})",
            ("coder",),
        )
        seconds = rng.uniform(0.4, 3.0)
        if flaky:
            victim = rng.choice(suite)
            timeout = {victim: "Failed: Timeout >5.0s"}
            output = t.tool(
                "tester", "run_tests", arguments, _pytest(task.test_file, suite, timeout, None, seconds), seconds, True
            )
            arguments = json.dumps({"path": f"{task.test_file}::{victim}", "args": ["-q"]})
            t.llm(
                "tester",
                "chat",
                output,
                f"{self.say(txt.TESTER_RERUN, test=victim)}\nrun_tests({arguments})",
                ("run_tests",),
            )
            seconds = rng.uniform(0.3, 1.5)
            output = t.tool(
                "tester", "run_tests", arguments, _pytest(task.test_file, [victim], {}, None, seconds), seconds
            )
            summary = self.say(txt.TESTER_PASS, n=len(suite))
        else:
            report = _pytest(task.test_file, suite, failures, collect_error, seconds)
            output = t.tool("tester", "run_tests", arguments, report, seconds, bool(failures or collect_error))
            if collect_error:
                summary = self.say(txt.TESTER_COLLECT, error=collect_error)
            elif failures:
                test, error = next(iter(failures.items()))
                summary = self.say(
                    txt.TESTER_FAIL,
                    failed=len(failures),
                    n=len(suite),
                    passed=len(suite) - len(failures),
                    test=test,
                    error=error,
                )
            else:
                summary = self.say(txt.TESTER_PASS, n=len(suite))
        return t.llm("tester", "chat", output, summary, ("run_tests",))


def _slots(task: txt.CodeTask) -> dict[str, str]:
    return {"symbol": task.symbol, "module": task.module, "test_file": task.test_file}


def _pytest(
    test_file: str, suite: list[str], failures: dict[str, str], collect_error: str | None, seconds: float
) -> str:
    """Test output as ``pytest -q`` prints it; the reported time stays inside the tool call."""
    elapsed = f"{seconds * 0.9:.2f}s"
    if collect_error:
        return "\n".join(
            (
                "collected 0 items / 1 error",
                "==================================== ERRORS ====================================",
                f"_____________________ ERROR collecting {test_file} _____________________",
                f"ImportError while importing test module '{test_file}'.",
                f"E   {collect_error}",
                "=========================== short test summary info ============================",
                f"ERROR {test_file}",
                f"1 error in {elapsed}",
            )
        )
    marks = "".join("F" if name in failures else "." for name in suite)
    lines = [f"{test_file} {marks}".ljust(74) + " [100%]"]
    if failures:
        lines.append("=========================== short test summary info ============================")
        lines += [f"FAILED {test_file}::{name} - {error}" for name, error in failures.items()]
    passed = len(suite) - len(failures)
    counts = [f"{len(failures)} failed"] if failures else []
    if passed:
        counts.append(f"{passed} passed")
    lines.append(f"{', '.join(counts)} in {elapsed}")
    return "\n".join(lines)


# --- the RCA system --------------------------------------------------------------------------------

MAX_RCA_ROUNDS = 3


@dataclass
class _Evidence:
    """What the coordinator has heard this round."""

    suspect: str  # the service the traces point to
    traces_clear: bool  # the traces singled the suspect out
    metrics_anomaly: bool  # the metrics agent reported an anomaly on the suspect
    findings: list[str]
    reporters: tuple[str, ...]
    metric_note: str = ""
    log_note: str = ""


class _RcaSession(_Session):
    models: ClassVar[dict[str, str]] = dict.fromkeys(
        ("coordinator", "trace_agent", "metrics_agent", "log_agent", "reporter"), "claude-3-5-sonnet-20241022"
    )
    prompt_tokens: ClassVar[dict[str, int]] = {
        "coordinator": 900,
        "trace_agent": 720,
        "metrics_agent": 650,
        "log_agent": 600,
        "reporter": 480,
    }
    shared_history = False  # RCLAgent-style bounded views: each agent sees its hand-off only

    def play(self) -> str:
        rng = self.rng
        self.root_cause = rng.choice(tuple(txt.CALL_PATHS))
        self.path = rng.choice(txt.CALL_PATHS[self.root_cause])
        self.op, self.cause_op = self.path[0][1], self.path[-1][1]
        self.caller = self.path[-2][0]
        self.kind = rng.choice(txt.FAULT_KINDS)
        self.onset_ns = self.transcript.clock - int(rng.uniform(3, 15) * _MINUTE_NS)
        self.onset = _hhmm(self.onset_ns)
        self.before = rng.randint(80, 300) if self.kind.symptom == "latency" else round(rng.uniform(0.1, 0.8), 1)
        self.after = rng.randint(1200, 4000) if self.kind.symptom == "latency" else round(rng.uniform(8, 45), 1)
        self.pods: dict[str, list[str]] = {}
        # natural variation
        self.trace_timeout = rng.random() < 0.12
        self.metric_typo = rng.random() < 0.12
        self.metrics_detour = rng.random() < 0.25
        self.quiet_logs = rng.random() < self.kind.quiet_logs
        self.corroborate = self.quiet_logs and rng.random() < 0.6
        self.withholder = self.frng.choice(("trace_agent", "metrics_agent"))

        symptom = self.say(txt.SYMPTOMS[self.kind.symptom], before=self.before, after=self.after)
        ticket = f"INC-{rng.randint(1000, 99999)}"
        alert = self.say(txt.ALERTS, symptom=symptom, op=self.op, onset=f"{self.onset} UTC", ticket=ticket)
        instruction = self.transcript.llm(
            "coordinator",
            "invoke_agent",
            alert,
            self.say(txt.COORDINATOR_PLAN, op=self.op, onset=self.onset, window=self._window(0)),
            ("user",),
        )

        round_no, corroborated = 1, False
        evidence = self._investigate(instruction, round_no)
        while True:
            decision, note = self._consolidate(evidence, corroborated)
            if decision == "corroborate":
                round_no, corroborated = round_no + 1, True
                evidence.findings = [self._logs(note, self.caller, peer=self.root_cause, widen=round_no - 1)]
                evidence.reporters = ("log_agent",)
                continue
            if decision == "repeat" and round_no < MAX_RCA_ROUNDS:
                round_no += 1
                evidence = self._investigate(note, round_no)
                continue
            break
        self._report(decision, note, evidence)
        return alert

    # --- the investigation round: traces, then metrics and logs on whatever the traces implicate

    def _investigate(self, instruction: str, round_no: int) -> _Evidence:
        widen = round_no - 1  # repeated rounds look at a wider window
        trace_note, suspect, clear = self._traces(instruction, widen)
        metric_note, anomaly = self._metrics(suspect, clear, trace_note, widen)
        task = self.say(txt.LOGS_TASK, svc=suspect, window=self._window(widen), onset=self.onset)
        log_note = self._logs(task, suspect, peer=None, widen=widen)
        return _Evidence(
            suspect,
            clear,
            anomaly,
            [trace_note, metric_note, log_note],
            ("trace_agent", "metrics_agent", "log_agent"),
            metric_note,
            log_note,
        )

    def _traces(self, instruction: str, widen: int) -> tuple[str, str, bool]:
        rng, t = self.rng, self.transcript
        query: dict[str, Any] = {
            "service": "frontend",
            "operation": self.op,
            "start": _hhmm(self.onset_ns - (5 + 5 * widen) * _MINUTE_NS),
            "end": _hhmm(self.onset_ns + rng.randint(8, 15) * _MINUTE_NS),
            "order_by": rng.choice(("duration", "duration", "start_time")),  # the filter below finds the incident
            "limit": rng.choice((5, 10, 20)),
        }
        if self.kind.symptom == "latency":
            query["min_duration_ms"] = rng.choice((500, 800, 1000))
            if rng.random() < 0.3:
                query["status"] = "ok"  # slow but successful requests
        else:
            query["status"] = "error"
        evidence = True
        if self._fails_here("critical_trace_miss"):
            evidence = False
            self.mark("trace_agent", self._miss_query(query))
        intent = self.say(txt.TRACE_INTENT, op=self.op, window=f"{query['start']}–{query['end']} UTC")
        t.llm(
            "trace_agent", "invoke_agent", instruction, f"{intent}\nquery_traces({json.dumps(query)})", ("coordinator",)
        )
        if self.trace_timeout:
            self.trace_timeout = False
            arguments = json.dumps(query)
            error = t.tool("trace_agent", "query_traces", arguments, "error: deadline exceeded after 3.0s", 3.0, True)
            query["limit"], query["timeout_s"] = 5, 10
            t.llm(
                "trace_agent",
                "chat",
                error,
                f"{self.say(txt.TRACE_RETRY)}\nquery_traces({json.dumps(query)})",
                ("query_traces",),
            )
        if evidence:
            result, worst_total, worst_ms = self._evidence_traces(query)
            suspect = self.root_cause
        else:
            suspect = self.frng.choice(self._decoys())
            result, lead_op, lead_ms = self._quiet_traces(query, suspect)
            note = self.say(txt.TRACE_WEAK, svc=suspect, op=lead_op, ms=lead_ms)
        output = t.tool("trace_agent", "query_traces", json.dumps(query), result, rng.uniform(0.2, 2.5))
        if evidence and self._fails_here("information_withholding") and self.withholder == "trace_agent":
            self.mark(
                "trace_agent", f"the traces show {self.root_cause} on the critical path; the summary does not name it"
            )
            note = f"{self.say(txt.TRACE_HEDGES, op=self.op)} {self.say(txt.TRACE_VAGUE)}"
            suspect, evidence = "frontend", False
        elif evidence:
            note = self._trace_finding(result.count("\n"), worst_total, worst_ms)
        t.llm("trace_agent", "chat", output, note, ("query_traces",))
        return note, suspect, evidence

    def _trace_finding(self, traces: int, worst_total: int, worst_ms: int) -> str:
        sign = self.rng.choice(txt.SIGN_TEXT[self.kind.trace_sign])
        if self.kind.trace_sign == "error":
            return self.say(
                txt.TRACE_FINDING_ERRORS, svc=self.root_cause, op=self.op, hop=self.cause_op, sign=sign, count=traces
            )
        path = " > ".join(svc for svc, _ in self.path)
        slots = {
            "svc": self.root_cause,
            "op": self.cause_op,
            "ms": worst_ms,
            "total": worst_total,
            "sign": sign,
            "path": path,
        }
        finding = self.say(txt.TRACE_FINDING, **slots)
        # first impressions like those of a summary that names no service, before the finding
        opening = self.rng.random()
        if opening < 0.3:
            return f"{self.say(txt.TRACE_HEDGES, op=self.op)} {finding}"
        if opening < 0.45:
            return f"{self.say(txt.TRACE_VAGUE)} Looking closer: {finding}"
        return finding

    def _miss_query(self, query: dict[str, Any]) -> str:
        """Bend the trace query so that it misses the incident; says how."""
        how = self.frng.choice(("window", "operation", "filter", "order"))
        if how == "window":
            query["start"] = _hhmm(self.onset_ns - 45 * _MINUTE_NS)
            query["end"] = _hhmm(self.onset_ns - 20 * _MINUTE_NS)
            return "the trace query's window ends before the incident began"
        if how == "operation":
            others = sorted({path[0][1] for paths in txt.CALL_PATHS.values() for path in paths} - {self.op})
            query["operation"] = self.frng.choice(others)
            return f"the trace query asks for `{query['operation']}` instead of the alerting `{self.op}`"
        if how == "filter" and self.kind.symptom == "latency":
            query.pop("min_duration_ms", None)
            query["status"] = "error"
            return "the trace query keeps only error traces although the incident is slow, not failing"
        if how == "filter":
            query["status"] = "ok"
            return "the trace query keeps only successful traces although the incident is failing requests"
        query["order_by"], query["limit"] = "start_time", 5
        query.pop("min_duration_ms", None)
        query.pop("status", None)
        return "the trace query takes the first five traces by start time instead of the worst ones"

    def _decoys(self) -> list[str]:
        """Services a misled investigator ends up suspecting."""
        pool = {svc for svc, _ in txt.SIBLING_CALLS} | {txt.LOOKALIKES[self.root_cause]} | {s for s, _ in self.path[1:]}
        return sorted(pool - {self.root_cause, "frontend"})

    def _evidence_traces(self, query: dict[str, Any]) -> tuple[str, int, int]:
        """Traces through the faulty service, worst first; also the worst one's total and faulty-hop times."""
        rng = self.rng
        rows = []
        for _ in range(rng.randint(3, min(5, query["limit"]))):
            if self.kind.symptom == "latency":
                total = int(self.after * rng.uniform(0.7, 1.15))
                own = int(total * rng.uniform(0.85, 0.97))
            else:
                total, own = rng.randint(10, 120), rng.randint(2, 8)
            hops = []
            for depth, (svc, op) in enumerate(self.path):
                ms = total - depth * rng.randint(1, 6)
                if svc != self.root_cause:
                    hops.append(f"{svc} {op} {ms} ms" + (" ERROR" if self.kind.trace_sign == "error" else ""))
                elif self.kind.trace_sign == "self":
                    hops.append(f"{svc} {op} {ms} ms (self {own} ms)")
                elif self.kind.trace_sign == "network":
                    own = ms - rng.randint(2, 15)
                    hops.append(f"{svc} {op} client {ms} ms / server {ms - own} ms")
                else:
                    hops.append(f"{svc} {op} {own} ms ERROR Unavailable")
            sibling, sibling_op = rng.choice(txt.SIBLING_CALLS)
            trace = " > ".join(hops) + f" | {sibling} {sibling_op} {rng.randint(1, 9)} ms"
            rows.append((total, own, f"{rng.randbytes(8).hex()} {total} ms  {trace}"))
        worst = max(rows)
        if query["order_by"] == "duration":
            rows.sort(reverse=True)
        header = f"{len(rows)} traces (frontend {self.op}, {query['start']}–{query['end']} UTC)"
        return "\n".join([header, *(row for _, _, row in rows)]), worst[0], worst[1]

    def _quiet_traces(self, query: dict[str, Any], lead: str) -> tuple[str, str, int]:
        """Traces without the incident in them; ``lead`` holds the largest (still small) hop.

        Also returns that hop's operation and its longest time, for the trace agent's summary."""
        rng = self.rng
        lead_op = txt.SERVICE_OPERATION[lead]
        status = " ERROR DeadlineExceeded" if query.get("status") == "error" else ""
        siblings = [call for call in txt.SIBLING_CALLS if call[0] != lead]
        rows = []
        for _ in range(rng.randint(2, 5)):
            lead_ms = rng.randint(20, 90)
            total = lead_ms + rng.randint(30, 200)
            sibling, sibling_op = rng.choice(siblings)
            trace = (
                f"frontend {query['operation']} {total} ms > {lead} {lead_op} {lead_ms} ms{status} "
                f"(self {lead_ms - rng.randint(1, 5)} ms) | {sibling} {sibling_op} {rng.randint(1, 9)} ms"
            )
            rows.append((total, lead_ms, f"{rng.randbytes(8).hex()} {total} ms  {trace}"))
        rows.sort(reverse=query["order_by"] == "duration")
        header = f"{len(rows)} traces (frontend {query['operation']}, {query['start']}–{query['end']} UTC)"
        return "\n".join([header, *(row for _, _, row in rows)]), lead_op, max(ms for _, ms, _ in rows)

    def _metrics(self, suspect: str, clear: bool, trace_note: str, widen: int) -> tuple[str, bool]:
        """The metrics agent's turn on the suspect; returns its report and whether it reports an anomaly."""
        rng, t = self.rng, self.transcript
        task = self.say(
            txt.METRICS_TASK, svc=suspect, detail=trace_note.split(".")[0], window=self._window(widen), onset=self.onset
        )
        # a careful agent first rules out the neighbour on the path; its clean result is normal
        detour = self.metrics_detour and clear and not self._fails_here("metric_query_error")
        self.metrics_detour = False
        kind, target, about, query = self._metrics_query(suspect, clear)
        start, end = _hhmm(self.onset_ns - 6 * _MINUTE_NS), _hhmm(self.onset_ns + 6 * _MINUTE_NS)
        call = {"query": query, "start": start, "end": end, "step": "2m"}
        intent = f"{self.say(txt.METRICS_INTENT, aspect=kind.aspect, svc=about)}\nquery_metrics({json.dumps(call)})"
        if detour:
            neighbour = self.caller if self.caller != "frontend" else txt.LOOKALIKES[suspect]
            first = {**call, "query": kind.query.format(svc=neighbour)}
            opener = self.say(txt.METRICS_DETOUR, svc=neighbour)
            t.llm(
                "metrics_agent", "invoke_agent", task, f"{opener}\nquery_metrics({json.dumps(first)})", ("coordinator",)
            )
            result, before, _ = self._series(first, neighbour, kind, anomalous=False)
            output = t.tool("metrics_agent", "query_metrics", json.dumps(first), result, rng.uniform(0.05, 0.8))
            clean = self.say(txt.METRICS_CLEAN, aspect=kind.aspect, svc=neighbour, before=before, unit=kind.unit)
            t.llm(
                "metrics_agent",
                "chat",
                output,
                f"{clean} {self.say(txt.METRICS_NEXT, svc=suspect)}\n{intent}",
                ("query_metrics",),
            )
        else:
            t.llm("metrics_agent", "invoke_agent", task, intent, ("coordinator",))
        if self.metric_typo:
            self.metric_typo = False
            typo = {**call, "query": query.replace("}", "", 1)}
            error = (
                f'parse error at char {query.index("}") + 1}: unexpected "[" in label matching'  # as Prometheus says
            )
            t.tool("metrics_agent", "query_metrics", json.dumps(typo), error, rng.uniform(0.02, 0.1), True)
            fix = f"{self.say(txt.METRICS_TYPO_FIX)}\nquery_metrics({json.dumps(call)})"
            t.llm("metrics_agent", "chat", error, fix, ("query_metrics",))
        matched = query == kind.query.format(svc=target)
        anomalous = matched and target == self.root_cause and kind is self.kind
        if matched:
            result, before, after = self._series(call, target, kind, anomalous)
        else:
            result, before, after = f"query: {query}\nresult: no series matched", 0.0, 0.0
        output = t.tool("metrics_agent", "query_metrics", json.dumps(call), result, rng.uniform(0.05, 0.8))

        slots = {"aspect": kind.aspect, "svc": about, "before": before, "after": after, "unit": kind.unit}
        if not matched:
            note = self.say(txt.METRICS_EMPTY, **slots)
        elif not anomalous:
            note = self.say(txt.METRICS_CLEAN, **slots)
        elif self._fails_here("information_withholding") and self.withholder == "metrics_agent":
            self.mark(
                "metrics_agent", f"{kind.aspect} of {target} rose to {after} {kind.unit}; the report calls it normal"
            )
            note, anomalous = self.say(txt.METRICS_CLEAN, **slots), False
        else:
            note = self.say(txt.METRICS_FINDING, onset=self.onset, **slots)
        t.llm("metrics_agent", "chat", output, note, ("query_metrics",))
        return note, anomalous

    def _metrics_query(self, suspect: str, clear: bool) -> tuple[txt.FaultKind, str, str, str]:
        """Which metric the agent queries, for which service, which service it says it checks, and the query."""
        frng = self.frng
        # with clear traces the sign (self time, errors, slow hop) tells which metric to check
        kind = self.kind if clear else self.rng.choice(txt.FAULT_KINDS)
        if not self._fails_here("metric_query_error"):
            return kind, suspect, suspect, kind.query.format(svc=suspect)
        how = frng.choice(("service", "label", "metric"))
        if how == "service":  # says it checks the suspect, queries another service
            target = frng.choice(sorted({txt.LOOKALIKES[suspect], self.caller} - {"frontend", suspect}))
            self.mark("metrics_agent", f"the metrics query selects {target} instead of {suspect}")
            return kind, target, suspect, kind.query.format(svc=target)
        if how == "label":
            self.mark("metrics_agent", "the metrics query's label selector matches no series")
            return kind, suspect, suspect, _break_selector(kind.query.format(svc=suspect), suspect)
        other = frng.choice([k for k in txt.FAULT_KINDS if k is not self.kind])
        self.mark("metrics_agent", f"the metrics agent checks {other.aspect} although the traces show {self.kind.name}")
        return other, suspect, suspect, other.query.format(svc=suspect)

    def _series(self, call: dict[str, str], svc: str, kind: txt.FaultKind, anomalous: bool) -> tuple[str, float, float]:
        """A range query's result, one line per pod and seven points two minutes apart (the incident starts
        at the fourth); also the first pod's level before and its peak after."""
        rng = self.rng
        lines = [f"query: {call['query']}", f"range: {call['start']}–{call['end']} UTC, step 2m, unit {kind.unit}"]
        levels = []
        for pod in self._pods(svc):
            points = [_round(rng.uniform(*kind.normal)) for _ in range(3)]
            points += [_round(rng.uniform(*(kind.faulty if anomalous else kind.normal))) for _ in range(4)]
            lines.append(f"{pod}: " + " ".join(str(v) for v in points))
            levels.append((_round(sum(points[:3]) / 3), max(points[3:])))
        return "\n".join(lines), *levels[0]

    def _logs(self, task: str, svc: str, peer: str | None, widen: int) -> str:
        """The log agent's turn on ``svc``; with ``peer`` it looks for failed calls to that service."""
        rng, t = self.rng, self.transcript
        search = {
            "service": svc,
            "level": ">=warn",
            "start": _hhmm(self.onset_ns - (5 + 5 * widen) * _MINUTE_NS),
            "end": _hhmm(self.onset_ns + 10 * _MINUTE_NS),
            "limit": 50,
        }
        t.llm(
            "log_agent",
            "invoke_agent",
            task,
            f"{self.say(txt.LOGS_INTENT, svc=svc)}\nsearch_logs({json.dumps(search)})",
            ("coordinator",),
        )
        if peer:
            templates: tuple[str, ...] = txt.CALLER_TIMEOUT_LOGS
        elif svc == self.root_cause and not self.quiet_logs:
            templates = self.kind.logs
        else:
            templates = ()
        lines = sorted(
            self._log_line(svc, rng.choice(templates), peer) for _ in range(rng.randint(2, 5) * bool(templates))
        )
        total = len(lines) + (rng.randint(0, 40) if lines else 0)
        result = "\n".join([f"{total} lines matched, showing {len(lines)}", *lines]) if lines else "0 lines matched"
        output = t.tool("log_agent", "search_logs", json.dumps(search), result, rng.uniform(0.1, 1.5))
        if lines:
            line = lines[0].split(" ", 2)[2]
            note = self.say(txt.LOGS_FINDING, svc=svc, line=line, count=total, more=total - 1)
        else:
            note = self.say(txt.LOGS_QUIET, svc=svc)
        return t.llm("log_agent", "chat", output, note, ("search_logs",))

    def _log_line(self, svc: str, template: str, peer: str | None) -> str:
        rng = self.rng
        at = self.onset_ns + rng.randrange(0, 8 * _MINUTE_NS)
        language, pod = txt.SERVICE_LANGUAGE[svc], rng.choice(self._pods(svc))
        message = template.format(
            ms=rng.randint(800, 9000),
            pct=rng.randint(91, 99),
            peer=peer or self.caller,
            pod=pod,
            oom=txt.OUT_OF_MEMORY[language],
            crash=txt.CRASHES[language],
        )
        stamp = datetime.fromtimestamp(at / _NS, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{stamp} {pod} {message}"

    # --- concluding

    def _consolidate(self, evidence: _Evidence, corroborated: bool) -> tuple[str, str]:
        """The coordinator weighs the round; returns its decision and what it says."""
        inputs = "\n".join(f"{who}: {said}" for who, said in zip(evidence.reporters, evidence.findings, strict=True))
        if not evidence.traces_clear:
            decision, note = "weak", self.say(txt.CONSOLIDATE_WEAK, svc=evidence.suspect)
        elif not evidence.metrics_anomaly:
            other = txt.LOOKALIKES[evidence.suspect]
            decision = "redirect"
            note = self.say(txt.CONSOLIDATE_REDIRECT, svc=evidence.suspect, other=other, metric=evidence.metric_note)
        elif self.corroborate and not corroborated:
            decision = "corroborate"
            ask = self.say(txt.LOGS_CALLER_TASK, svc=evidence.suspect, caller=self.caller, window=self._window(1))
            note = f"{self.say(txt.CONSOLIDATE_DOUBTS, svc=evidence.suspect)} {ask}"
        elif self.fault == "round_limit":
            if self.failure is None:
                self.mark(
                    "coordinator",
                    f"traces, metrics and logs agree on {self.root_cause}, yet the coordinator re-runs them",
                )
            doubt = self.say(txt.CONSOLIDATE_DOUBTS, svc=evidence.suspect)
            decision, note = "repeat", f"{doubt} {self.say(txt.CONSOLIDATE_REPEAT, svc=evidence.suspect)}"
        else:
            decision = "conclude"
            logs = evidence.log_note if evidence.reporters[0] == "trace_agent" else evidence.findings[0]
            note = self.say(txt.CONSOLIDATE, svc=evidence.suspect, metric=evidence.metric_note.rstrip("."), logs=logs)
        self.transcript.llm("coordinator", "chat", inputs, note, evidence.reporters)
        return decision, note

    def _report(self, decision: str, note: str, evidence: _Evidence) -> None:
        rng = self.rng
        if decision == "repeat":  # the round limit stopped the investigation
            ranking = self._ranking(evidence.suspect)
            report = self.say(txt.REPORT_INCONCLUSIVE, ranking=", ".join(ranking))
            self.transcript.llm("reporter", "invoke_agent", note, report, ("coordinator",))
            return
        answer = txt.LOOKALIKES[evidence.suspect] if decision == "redirect" else evidence.suspect
        confidence = {"conclude": (0.75, 0.95), "redirect": (0.5, 0.7)}.get(decision, (0.3, 0.5))
        fault = self.kind.name if answer == self.root_cause else rng.choice(txt.FAULT_KINDS).name
        if self.fault == "localisation_error":
            answer = self.frng.choice(
                sorted({self.caller, txt.LOOKALIKES[self.root_cause]} - {self.root_cause, "frontend"})
            )
            self.mark("reporter", f"the evidence points to {self.root_cause}; the report names {answer}")
        template = rng.choice(txt.REPORT)
        quote = '"' if template.startswith("{{") else ""  # the JSON form lists quoted names
        report = template.format(
            svc=answer,
            pod=self._pods(answer)[0],
            fault=fault,
            conf=round(rng.uniform(*confidence), 2),
            ranking=", ".join(f"{quote}{svc}{quote}" for svc in self._ranking(answer)),
            onset=self.onset,
            op=self.op,
        )
        self.transcript.llm("reporter", "invoke_agent", note, report, ("coordinator",))

    def _ranking(self, first: str) -> list[str]:
        others = sorted(
            {"frontend", self.caller, txt.LOOKALIKES[self.root_cause], self.root_cause, *self._decoys()} - {first}
        )
        return [first, *self.rng.sample(others, 2)]

    def _pods(self, svc: str) -> list[str]:
        if svc not in self.pods:
            rng = self.rng
            replica_set = "".join(rng.choices("bcdfghjklmnpqrstvwxz2456789", k=rng.choice((9, 10))))
            self.pods[svc] = [
                f"{svc}-{replica_set}-{''.join(rng.choices('bcdfghjklmnpqrstvwxz2456789', k=5))}"
                for _ in range(1 if svc == "redis-cart" else rng.randint(1, 2))
            ]
        return self.pods[svc]

    def _window(self, widen: int) -> str:
        start = self.onset_ns - (5 + 5 * widen) * _MINUTE_NS
        return f"{_hhmm(start)}–{_hhmm(self.onset_ns + 10 * _MINUTE_NS)} UTC"


def _break_selector(query: str, svc: str) -> str:
    """The query with a label selector that matches nothing: a pod regex without the replica suffix, or a
    workload given by its DNS name."""
    if f'pod=~"{svc}-.*"' in query:
        return query.replace(f'pod=~"{svc}-.*"', f'pod=~"{svc}"')
    return query.replace(f'destination_workload="{svc}"', f'destination_workload="{svc}.boutique"')


def _round(value: float) -> float:
    return round(value, 2) if value < 10 else round(value)


def _hhmm(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, tz=UTC).strftime("%H:%M")


_SESSIONS: dict[str, type[_Session]] = {"code": _CodeSession, "rca": _RcaSession}


# --- OTLP encoding (OpenTelemetry GenAI semantic conventions) -------------------------------------

_SCOPE = "faultline.simulator.agents"


def run_to_otlp(run: AgentRun) -> ExportTraceServiceRequest:
    """The whole run as one trace: the orchestrator's root span and one child span per step."""
    root, steps = _spans(run)
    return _request(run, [root, *steps])


def run_to_otlp_steps(run: AgentRun) -> list[ExportTraceServiceRequest]:
    """One request per step, in order, as a live exporter sends them; the last also carries the root span,
    which ends with the run."""
    root, steps = _spans(run)
    requests = [_request(run, [span]) for span in steps]
    requests[-1].resource_spans[0].scope_spans[0].spans.append(root)
    return requests


def _request(run: AgentRun, spans: list[Span]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        to_key_values({"service.name": f"mas-{run.system}", "gen_ai.system": "faultline-sim"})
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = _SCOPE
    scope_spans.spans.extend(spans)
    return request


def _spans(run: AgentRun) -> tuple[Span, list[Span]]:
    # ids come from a generator seeded by the trace id, so every encoding of a run agrees
    rng = random.Random(run.trace_id)
    root_id = rng.randbytes(8)
    steps = []
    for step in run.steps:
        span_id, call_id = rng.randbytes(8), f"call_{rng.randbytes(12).hex()}" if step.tool else ""
        steps.append(_step_span(run, step, span_id, root_id, call_id))
    orchestrator = f"{run.system}-orchestrator"
    root = Span(
        trace_id=run.trace_id,
        span_id=root_id,
        name=f"invoke_agent {orchestrator}",
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=run.steps[0].start_ns,
        end_time_unix_nano=max(step.start_ns + step.duration_ns for step in run.steps),
    )
    root.attributes.extend(
        to_key_values(
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": orchestrator,
                "gen_ai.agent.id": f"{run.run_id}/{orchestrator}",
                "gen_ai.conversation.id": run.run_id,
                "gen_ai.usage.input_tokens": sum(step.input_tokens for step in run.steps),
                "gen_ai.usage.output_tokens": sum(step.output_tokens for step in run.steps),
                "gen_ai.input.messages": _messages("user", run.task),
                "gen_ai.output.messages": _messages("assistant", run.steps[-1].output_text),
            }
        )
    )
    return root, steps


def _step_span(run: AgentRun, step: AgentStep, span_id: bytes, parent_id: bytes, call_id: str) -> Span:
    is_tool = step.operation == "execute_tool"
    span = Span(
        trace_id=run.trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        name=f"execute_tool {step.tool}" if is_tool else f"{step.operation} {step.agent}",
        kind=Span.SPAN_KIND_INTERNAL if is_tool else Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=step.start_ns,
        end_time_unix_nano=step.start_ns + step.duration_ns,
    )
    attributes: dict[str, object] = {
        "gen_ai.operation.name": step.operation,
        "gen_ai.agent.name": step.agent,
        "gen_ai.agent.id": f"{run.run_id}/{step.agent}",
        "gen_ai.conversation.id": run.run_id,
        "gen_ai.request.model": step.model,
        "gen_ai.usage.input_tokens": step.input_tokens,
        "gen_ai.usage.output_tokens": step.output_tokens,
    }
    if is_tool:
        attributes |= {"gen_ai.tool.name": step.tool, "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": "function"}
    attributes |= {
        "gen_ai.input.messages": _messages("assistant" if is_tool else "user", step.input_text),
        "gen_ai.output.messages": _messages(step.role, step.output_text),
        "faultline.step.index": step.index,
        "faultline.step.received_from": list(step.received_from),
    }
    span.attributes.extend(to_key_values(attributes))
    if step.is_error:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = step.output_text.splitlines()[-1][:200]
    return span


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])
