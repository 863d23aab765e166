"""Chart tests: they need helm (and, for the install test, a self-built control plane) from
deploy/k8s/build_binaries.sh, so they run under `make test-helm`, which builds those first.

Under a plain `make test` they are skipped unless FAULTLINE_HELM_TESTS=1; with it set, a missing binary is a
failure, not a skip.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "faultline"
BIN = Path(os.environ.get("FAULTLINE_K8S_BIN", Path.home() / ".cache" / "faultline" / "bin"))
HELM = BIN / "helm"
ENABLED = os.environ.get("FAULTLINE_HELM_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="chart tests run under `make test-helm` (FAULTLINE_HELM_TESTS=1)")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 300) -> Result:
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"{HELM} is missing: run deploy/k8s/build_binaries.sh helm (make k8s-binaries)")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/faultline-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/faultline-helm/config",
    }
    env["HELM_DATA_HOME"] = "/tmp/faultline-helm/data"
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, timeout=timeout)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout[-2000:]}")
    return result


def render(*args: str, release: str = "fl", namespace: str = "faultline") -> list[dict]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def default_docs() -> list[dict]:
    return render()
