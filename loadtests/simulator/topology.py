"""A microservice system: services, their pods and nodes, operations and the call graph.

Loaded from YAML (``systems/*.yaml``) so that users can describe their own system::

    system: online-boutique
    nodes: 4
    services:
      frontend:
        pods: 2
        operations:
          "GET /":
            latency_ms: 6          # median own processing time
            calls:
              - currencyservice/GetSupportedCurrencies
              - {to: adservice/GetAds, probability: 0.8, timeout_ms: 500, retries: 1}
              - {to: emailservice/SendOrderConfirmation, async: true}
    traffic:
      rate_per_s: 40
      flows:
        - {operation: "frontend/GET /", weight: 0.4}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SYSTEMS_DIR = Path(__file__).parent / "systems"


class TopologyError(ValueError):
    """The system description is inconsistent (unknown callee, cycle, bad name...)."""


@dataclass(frozen=True)
class Call:
    to: str  # "service/operation"
    probability: float = 1.0
    count: int = 1  # calls made in sequence (e.g. one Convert per cart item)
    is_async: bool = False  # fire-and-forget: the caller does not wait
    optional: bool = False  # the caller degrades gracefully when this call fails
    timeout_ms: float = 1000.0
    retries: int = 0

    @property
    def service(self) -> str:
        return self.to.split("/", 1)[0]


@dataclass(frozen=True)
class Operation:
    service: str
    name: str
    latency_ms: float
    sigma: float = 0.35  # lognormal spread of the own processing time
    error_rate: float = 0.0005
    calls: tuple[Call, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.service}/{self.name}"


@dataclass(frozen=True)
class Service:
    name: str
    pods: tuple[str, ...]
    kind: str  # web | rpc | db | cache | queue: shapes metrics and logs
    language: str
    cpu_base: float  # idle CPU utilisation, 0..1 of the pod's limit
    cpu_per_rps: float  # utilisation added per request/s handled by one pod
    memory_mb: float
    operations: dict[str, Operation]


@dataclass(frozen=True)
class Flow:
    operation: str
    weight: float


@dataclass(frozen=True)
class Topology:
    system: str
    services: dict[str, Service]
    nodes: tuple[str, ...]
    pod_node: dict[str, str]
    rate_per_s: float
    diurnal_amplitude: float
    diurnal_period_s: float
    flows: tuple[Flow, ...]
    step_s: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def operation(self, key: str) -> Operation:
        service, _, name = key.partition("/")
        try:
            return self.services[service].operations[name]
        except KeyError as error:
            raise TopologyError(f"unknown operation {key!r}") from error

    def expected_latency_ms(self, key: str) -> float:
        """Typical time of an operation with its synchronous calls (their expected count)."""
        op = self.operation(key)
        calls = sum(c.probability * c.count * self.expected_latency_ms(c.to) for c in op.calls if not c.is_async)
        return op.latency_ms + calls

    def entry_services(self) -> set[str]:
        return {flow.operation.split("/", 1)[0] for flow in self.flows}


def _call(raw: str | dict[str, Any]) -> Call:
    if isinstance(raw, str):
        return Call(to=raw)
    raw = dict(raw)
    if "async" in raw:
        raw["is_async"] = raw.pop("async")
    return Call(**raw)


def parse(doc: dict[str, Any]) -> Topology:
    system = doc["system"]
    n_nodes = int(doc.get("nodes", 3))
    nodes = tuple(f"node-{i + 1}" for i in range(n_nodes))
    services: dict[str, Service] = {}
    pod_node: dict[str, str] = {}
    placed = 0
    for name, spec in doc["services"].items():
        if "_" in name or "/" in name:
            # RCAEval splits column names on "_" to recover the service.
            raise TopologyError(f"service name {name!r} must not contain '_' or '/'")
        pods = tuple(f"{name}-{i}" for i in range(int(spec.get("pods", 1))))
        for pod in pods:
            pod_node[pod] = nodes[placed % n_nodes]
            placed += 1
        operations = {
            op_name: Operation(
                service=name,
                name=op_name,
                latency_ms=float(op.get("latency_ms", 5)),
                sigma=float(op.get("sigma", 0.35)),
                error_rate=float(op.get("error_rate", 0.0005)),
                calls=tuple(_call(c) for c in op.get("calls", ())),
            )
            for op_name, op in (spec.get("operations") or {}).items()
        }
        if not operations:
            raise TopologyError(f"service {name!r} has no operations")
        services[name] = Service(
            name=name,
            pods=pods,
            kind=spec.get("kind", "rpc"),
            language=spec.get("language", "go"),
            cpu_base=float(spec.get("cpu_base", 0.08)),
            cpu_per_rps=float(spec.get("cpu_per_rps", 0.004)),
            memory_mb=float(spec.get("memory_mb", 128)),
            operations=operations,
        )
    traffic = doc.get("traffic", {})
    flows = tuple(Flow(f["operation"], float(f.get("weight", 1.0))) for f in traffic.get("flows", ()))
    topology = Topology(
        system=system,
        services=services,
        nodes=nodes,
        pod_node=pod_node,
        rate_per_s=float(traffic.get("rate_per_s", 20)),
        diurnal_amplitude=float(traffic.get("diurnal_amplitude", 0.3)),
        diurnal_period_s=float(traffic.get("diurnal_period_s", 3600)),
        flows=flows,
        step_s=int(doc.get("step_s", 1)),
    )
    _validate(topology)
    return topology


def _validate(topology: Topology) -> None:
    if not topology.flows:
        raise TopologyError("traffic.flows is empty: no request enters the system")
    for service in topology.services.values():
        for op in service.operations.values():
            for call in op.calls:
                topology.operation(call.to)  # raises for an unknown callee
    for flow in topology.flows:
        topology.operation(flow.operation)

    # The call graph below each flow must be a tree of finite depth.
    def visit(key: str, path: tuple[str, ...]) -> None:
        if key in path:
            raise TopologyError(f"call cycle: {' -> '.join((*path, key))}")
        for call in topology.operation(key).calls:
            visit(call.to, (*path, key))

    for flow in topology.flows:
        visit(flow.operation, ())


def load(name_or_path: str | Path) -> Topology:
    """A shipped system by name (``online-boutique``, ``train-ticket``) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SYSTEMS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SYSTEMS_DIR.glob("*.yaml")))
        raise TopologyError(f"no system {name_or_path!r} (shipped: {shipped}; or give a YAML path)")
    return parse(yaml.safe_load(path.read_text()))
