"""The console on the real broker, in a real browser: platform events in, an incident clicked through —
its timeline, the RCA report's ranked root causes and evidence graph — and an alert with its flagged step.
Screenshots are kept under test-artifacts/."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.kafka.broker import free_port
from services.common import topics
from services.common.admin import ensure_topics
from services.common.bus import Publisher
from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, rca_pb2
from services.common.settings import GrpcSettings, KafkaSettings
from services.common.topics import CATALOGUE
from services.console.main import ConsoleSettings, build
from tests.integration.conftest import wait_until

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def console(kafka: KafkaSettings) -> Iterator[tuple[str, object]]:
    ensure_topics(kafka, CATALOGUE)
    port = free_port()
    settings = ConsoleSettings(kafka=kafka, http_port=port, grpc=GrpcSettings(port=0), metrics_port=0, heartbeat_s=0)
    runtime, store = build(settings)
    runtime.start()
    yield f"http://127.0.0.1:{port}", store
    runtime.stop()


def _events(kafka: KafkaSettings) -> tuple[detector_pb2.Incident, detector_pb2.Alert]:
    incident = detector_pb2.Incident(
        id=uuid.uuid4().hex,
        system="online-boutique",
        status=detector_pb2.INCIDENT_STATUS_OPEN,
        failure_type="delay",
        peak_anomaly_score=0.99,
        anomalous_windows=6,
        summary="checkout latency far above normal",
    )
    incident.opened_at.FromSeconds(int(time.time()) - 120)
    report = rca_pb2.RcaReport(id=uuid.uuid4().hex, incident_id=incident.id, system=incident.system, mode="evidence")
    report.candidates.add(rank=1, service="cartservice", fault_type="delay", confidence=0.93, reason="self time 38x")
    report.candidates.add(rank=2, service="frontend", fault_type="delay", confidence=0.21, reason="waits on cart")
    graph = report.evidence
    graph.roots.append("a")
    graph.nodes.add(span_id="a", service="frontend", operation="/cart", is_abnormal=True, children=["b", "c"])
    graph.nodes.add(span_id="b", service="cartservice", operation="GetCart", is_abnormal=True, symptoms=["38x"])
    graph.nodes.add(span_id="c", service="currencyservice", operation="Convert", is_abnormal=False)
    report.trace_ids.append("0af7651916cd43dd8448eb211c80319c")
    report.created_at.FromSeconds(int(time.time()) - 60)
    update = kg_pb2.KgUpdate(source_id=report.id, source_kind="rca-report", nodes_added=7, edges_added=12)
    update.created_at.FromSeconds(int(time.time()) - 30)
    alert = detector_pb2.Alert(
        id=uuid.uuid4().hex, run_id="run-42", system="code", agent="coder", step_index=5, failure_type="incorrect code"
    )
    alert.confidence = 0.87
    alert.matched.add(case_id="case-7", failure_type="incorrect code", similarity=0.91)
    plan = detector_pb2.MitigationPlan(
        id=uuid.uuid4().hex,
        alert_id=alert.id,
        action=detector_pb2.MITIGATION_ACTION_RERUN_STEP_WITH_HINT,
        target="coder",
        hint="the tests expect an idempotent retry",
        dry_run=True,
    )
    publisher = Publisher(kafka, source="faultline/test")
    # The report first: the console holds it until its incident arrives.
    for topic, message in (
        (topics.RCA_REPORTS, report),
        (topics.INCIDENTS, incident),
        (topics.KG_UPDATES, update),
        (topics.ALERTS, alert),
        (topics.MITIGATIONS, plan),
    ):
        publisher.publish(topic, message, key="test", wait=True)
    publisher.close()
    return incident, alert


def test_events_in_pages_out(console, kafka: KafkaSettings) -> None:  # type: ignore[no-untyped-def]
    url, store = console
    incident, alert = _events(kafka)
    wait_until(
        lambda: (v := store.incident(incident.id)) is not None and v.reports and v.kg_updates,
        60,
        f"the incident with its report and graph update (console holds {len(store.incident_list())} incidents)",
    )
    wait_until(lambda: any(a.id == alert.id and plans for a, plans in store.alert_list()), 60, "alert and its plan")
    overview = httpx.get(url + "/").text
    assert f"/incidents/{incident.id}" in overview and "cartservice" in overview
    page = httpx.get(f"{url}/incidents/{incident.id}").text
    assert page.index("cartservice") < page.index("frontend</a>")  # ranked first
    assert "RCA report: cartservice ranked first" in page and "+7 nodes" in page
    assert httpx.get(f"{url}/incidents/nope").status_code == 404
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium/ChromeDriver on this machine (make setup installs Debian's where apt can)")
    _click_through(url, incident, alert)


def _click_through(url: str, incident: detector_pb2.Incident, alert: detector_pb2.Alert) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    ARTIFACTS.mkdir(exist_ok=True)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url + "/")
        driver.save_screenshot(str(ARTIFACTS / "console-overview.png"))
        driver.find_element(By.CSS_SELECTOR, f'a[href="/incidents/{incident.id}"]').click()
        assert incident.id[:12] in driver.title
        rows = driver.find_elements(By.CSS_SELECTOR, "#candidates tr")
        assert "cartservice" in rows[1].text and "0.93" in rows[1].text
        kinds = [li.get_attribute("data-kind") for li in driver.find_elements(By.CSS_SELECTOR, "#timeline li")]
        assert kinds[0] == "incident" and "rca-report" in kinds and "kg-update" in kinds
        agents = driver.find_elements(By.CSS_SELECTOR, "svg.evidence g.agent")
        abnormal = {a.get_attribute("data-service") for a in agents if a.get_attribute("data-abnormal") == "true"}
        assert len(agents) == 3 and abnormal == {"frontend", "cartservice"}
        driver.save_screenshot(str(ARTIFACTS / "console-incident.png"))
        driver.get(url + "/")
        driver.find_element(By.CSS_SELECTOR, f'a[href="/alerts/{alert.id}"]').click()
        flagged = driver.find_element(By.ID, "flagged").text
        assert "coder" in flagged and "step 5" in flagged
        assert "rerun step with hint coder" in driver.find_element(By.ID, "plans").text
        driver.save_screenshot(str(ARTIFACTS / "console-alert.png"))
    finally:
        driver.quit()
