"""helm install/upgrade/uninstall against a real kube-apiserver (deploy/k8s/cluster.py): etcd, kube-apiserver,
kube-controller-manager and kube-scheduler built from the Go module proxy, kwok's fake GPU and CPU nodes.

The containers never run (kwok fakes the kubelet), so this checks what the API server and the control plane do
with the chart: every object accepted, the hook Job completed, Pods scheduled onto the right nodes and Running,
an upgrade with changed values rolled out, an uninstall leaving nothing behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploy.k8s.cluster import CPU_NODES, GPU_NODES, Cluster, missing_binaries
from tests.helm.conftest import CHART, ENABLED, helm

NAMESPACE = "faultline"
RELEASE = "fl"
VALUES = Path(__file__).with_name("install-values.yaml")
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
SERVICES = ("inference", "embedding", "detector", "rca", "kg-builder")

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    missing = missing_binaries()
    if missing and ENABLED:
        pytest.fail(f"missing {', '.join(missing)}: run deploy/k8s/build_binaries.sh (make k8s-binaries)")
    started = time.monotonic()
    with Cluster() as running:
        print(f"control plane up in {time.monotonic() - started:.1f}s: {running.timings}")
        yield running


def _pods(cluster: Cluster) -> list[dict]:
    return cluster.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={SELECTOR}")["items"]


def _wait_for(what: str, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(1)
    raise AssertionError(f"{what}: not reached in {timeout:.0f}s; last: {last}")


def _placement(cluster: Cluster) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for pod in _pods(cluster):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        name = pod["metadata"]["labels"].get("app.kubernetes.io/component", "")
        out.setdefault(name, []).append((pod["spec"].get("nodeName", ""), pod["status"].get("phase", "")))
    return out


def _all_running_on_right_nodes(cluster: Cluster, expected: dict[str, int]) -> bool | object:
    placement = _placement(cluster)
    for name in [n for n in placement if n not in SERVICES]:  # the helm test Pod and the topics Job's Pods
        for node, _phase in placement.pop(name):
            assert node in CPU_NODES, f"{name} Pod landed on {node}"
    counts = {name: len(pods) for name, pods in placement.items()}
    if counts != expected:
        return placement
    for name, pods in placement.items():
        for node, phase in pods:
            if phase != "Running":
                return placement
            allowed = GPU_NODES if name == "inference" else CPU_NODES
            assert node in allowed, f"{name} Pod landed on {node}, allowed {allowed}"
    return True


def _objects_missing(cluster: Cluster, manifest: str) -> list[str]:
    """Read every object of the release's manifest back from the API server; returns those missing."""
    missing = []
    for doc in yaml.safe_load_all(manifest):
        if not doc:
            continue
        meta = doc["metadata"]
        path = cluster.resource_path(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace", NAMESPACE))
        try:
            cluster.request("GET", path)
        except Exception as error:
            missing.append(f"{doc['kind']}/{meta['name']}: {error}")
    return missing


def test_install_upgrade_uninstall(cluster: Cluster) -> None:
    kube = cluster.kubeconfig
    t0 = time.monotonic()
    helm(
        "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", "-f", str(VALUES),
        "--wait", "--timeout", "5m", kubeconfig=kube,
    )  # fmt: skip
    installed = time.monotonic() - t0

    manifest = helm("get", "manifest", RELEASE, "-n", NAMESPACE, kubeconfig=kube).stdout
    kinds = sorted({d["kind"] for d in yaml.safe_load_all(manifest) if d})
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler"} <= set(kinds)
    assert {"Role", "RoleBinding", "ServiceAccount"} <= set(kinds)
    assert not _objects_missing(cluster, manifest)
    status = yaml.safe_load(helm("status", RELEASE, "-n", NAMESPACE, "-o", "yaml", kubeconfig=kube).stdout)
    assert status["info"]["status"] == "deployed"

    expected = {"inference": 1, "embedding": 1, "detector": 1, "rca": 1, "kg-builder": 1}
    _wait_for("every Pod Running on its kind of node", lambda: _all_running_on_right_nodes(cluster, expected))

    # `helm test` runs the test hook Pod; kwok plays its kubelet (the check script itself is not executed here).
    if cluster.completes_test_pods:
        out = helm("test", RELEASE, "-n", NAMESPACE, "--timeout", "2m", kubeconfig=kube).stdout
        assert "Phase:          Succeeded" in out, out

    # Upgrade with changed values: two inference replicas (GPU nodes only), rca switched off.
    t1 = time.monotonic()
    helm(
        "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(VALUES),
        "--set", "inference.replicaCount=2", "--set", "rca.enabled=false", "--set", "logLevel=DEBUG",
        "--wait", "--timeout", "5m", kubeconfig=kube,
    )  # fmt: skip
    upgraded = time.monotonic() - t1
    expected = {"inference": 2, "embedding": 1, "detector": 1, "kg-builder": 1}
    _wait_for("upgrade rolled out", lambda: _all_running_on_right_nodes(cluster, expected))
    history = yaml.safe_load(helm("history", RELEASE, "-n", NAMESPACE, "-o", "yaml", kubeconfig=kube).stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]
    assert not _objects_missing(cluster, helm("get", "manifest", RELEASE, "-n", NAMESPACE, kubeconfig=kube).stdout)

    t2 = time.monotonic()
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "3m", kubeconfig=kube)
    uninstalled = time.monotonic() - t2
    deployments = cluster.request("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments?labelSelector={SELECTOR}")
    assert not deployments["items"]
    _wait_for(
        "Pods gone after uninstall", lambda: not _pods(cluster) or [p["metadata"]["name"] for p in _pods(cluster)]
    )
    leftovers = helm("list", "-n", NAMESPACE, "-a", "-q", kubeconfig=kube).stdout.strip()
    assert leftovers == ""
    print(f"helm install {installed:.1f}s, upgrade {upgraded:.1f}s, uninstall {uninstalled:.1f}s; kinds: {kinds}")
