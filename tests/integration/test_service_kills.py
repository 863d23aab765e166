"""Reliability: each pipeline service SIGKILLed once while it has work in flight, then started again with the
same consumer groups and state. Counting events in and effects out: nothing is lost and no incident is
reported twice. A reduced ``make chaos`` (loadtests/reliability.py): the first half of the demo's scenario
(one delay fault), no inference service, no agent run; on 2 cores it takes about 3 minutes."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.reliability import Kill, Plan, chaos_run, print_report
from services.common import topics

pytestmark = pytest.mark.integration


@pytest.mark.timeout(480)
def test_killing_each_service_once_loses_nothing_and_reports_no_incident_twice(tmp_path: Path) -> None:
    plan = Plan(
        services=("embedding", "detector", "rca", "kg-builder"),
        halves=1,
        agent_run=False,
        kills=[
            Kill("embedding", "8 windows out, telemetry streaming in", lambda c: len(c.tap.all(topics.STATES)) >= 8),
            Kill("detector", "the fault's incident opened", lambda c: bool(c.incidents_of(0))),
            # a second later: the rca service has the incident and is analysing it
            Kill("rca", "a second after the incident opened", lambda c: bool(c.incidents_of(0)), delay_s=1.0),
            Kill("kg-builder", "the fault's RCA report out", lambda c: bool(c.reports_of(0))),
        ],
    )
    result = chaos_run(plan, tmp_path / "chaos", port_offset=200)
    print_report(result)
    assert not result["failed_kills"]
    assert [k["service"] for k in result["kills"] if k["restarted_after_s"]] == [k.service for k in plan.kills]
    assert result["detail"]["incidents_per_fault"] == {0: result["detail"]["incidents_per_fault"][0]}
    assert len(result["detail"]["incidents_per_fault"][0]) == 1, "one fault, one incident"
    assert result["no_incident_twice"], result["twice"]
    assert result["nothing_lost"], (result["lost"], result["detail"])
    assert result["topics"][topics.RCA_REPORTS]["events"] == 1
