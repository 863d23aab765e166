"""A real Kubernetes control plane on loopback for chart tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes that turn bound Pods Running), all self-built (deploy/k8s/build_binaries.sh).

    python deploy/k8s/cluster.py up [--dir DIR]   # start, print the kubeconfig path, run until Ctrl-C
    python deploy/k8s/cluster.py check            # say which binaries are missing

From Python: ``with Cluster() as cluster: ... cluster.kubeconfig ...``. Everything lives in a temporary
directory (certificates, service-account keys, etcd data, logs) and is removed on exit.

Fake nodes: ``gpu-0``/``gpu-1`` (label nvidia.com/gpu.present=true, capacity nvidia.com/gpu: 8; gpu-0 also has the
taint nvidia.com/gpu=present:NoSchedule, gpu-1 has none) and ``cpu-0``/``cpu-1``. kwok manages only nodes annotated
kwok.x-k8s.io/node=fake, keeps their heartbeats and moves the Pods bound to them to Running; Job Pods complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(os.environ.get("FAULTLINE_K8S_BIN", Path.home() / ".cache" / "faultline" / "bin"))
REQUIRED = ("etcd", "kube-apiserver", "kwok")
OPTIONAL = ("kube-controller-manager", "kube-scheduler")
TOKEN = "faultline-admin-token"  # loopback-only test cluster; never a real credential

GPU_NODES = ("gpu-0", "gpu-1")
# gpu-1 carries no taint, as in clusters that rely on labels alone: only the chart's node affinity keeps the CPU
# services off it, so the install test checks that affinity rather than the taint.
TAINTED_GPU_NODES = ("gpu-0",)
CPU_NODES = ("cpu-0", "cpu-1")
GPU_LABEL = "nvidia.com/gpu.present"


def missing_binaries(names: tuple[str, ...] = REQUIRED + OPTIONAL) -> list[str]:
    return [n for n in names if not os.access(BIN / n, os.X_OK)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            if check():
                return
        except Exception as error:  # not up yet
            last = error
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s ({last}):\n{tail}")


class Cluster:
    def __init__(self, workdir: Path | None = None, with_controllers: bool | None = None) -> None:
        missing = missing_binaries(REQUIRED)
        if missing:
            raise FileNotFoundError(f"missing {', '.join(missing)} in {BIN}: run deploy/k8s/build_binaries.sh")
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="faultline-k8s-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        have = not missing_binaries(OPTIONAL)
        self.with_controllers = have if with_controllers is None else with_controllers
        self.kubeconfig = self.dir / "kubeconfig"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.timings: dict[str, float] = {}
        self.completes_test_pods = False
        self._discovery: dict[str, tuple[str, dict]] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.dir / f"{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc, log

    def start(self) -> None:
        t0 = time.monotonic()
        self._keys()
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        etcd, log = self._spawn(
            "etcd",
            [
                str(BIN / "etcd"),
                "--name=faultline",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=faultline=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        _wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), 60, etcd, log)
        self.timings["etcd"] = time.monotonic() - t0

        admission = "" if self.with_controllers else "--disable-admission-plugins=ServiceAccount"
        api, log = self._spawn(
            "kube-apiserver",
            [
                str(BIN / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # the kubernetes Service may not point at loopback
                f"--secure-port={api_port}",
                f"--cert-dir={self.dir / 'certs'}",
                f"--token-auth-file={self.dir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.dir / 'sa.pub'}",
                f"--service-account-signing-key-file={self.dir / 'sa.key'}",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
                *([admission] if admission else []),
            ],
        )
        _wait("kube-apiserver", lambda: self._get("/readyz") == 200, 180, api, log)
        self.timings["kube-apiserver"] = time.monotonic() - t0
        self._write_kubeconfig()

        if self.with_controllers:
            cm, log_cm = self._spawn(
                "kube-controller-manager",
                [
                    str(BIN / "kube-controller-manager"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    f"--service-account-private-key-file={self.dir / 'sa.key'}",
                    f"--root-ca-file={self.dir / 'certs' / 'apiserver.crt'}",
                    "--use-service-account-credentials=false",
                    "--v=1",
                ],
            )
            self._spawn(
                "kube-scheduler",
                [
                    str(BIN / "kube-scheduler"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--v=1",
                ],
            )
            # The default ServiceAccount shows up once the controller-manager's controllers run.
            _wait("kube-controller-manager (default ServiceAccount)", self._default_sa, 120, cm, log_cm)
            self.timings["controllers"] = time.monotonic() - t0

        config = self._kwok_config()
        kwok, log = self._spawn(
            "kwok",
            [
                str(BIN / "kwok"),
                f"--config={config}",
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                "--cidr=10.0.0.1/24",
                "--node-ip=10.0.0.1",
                "--server-address=",
            ],
        )
        self._create_nodes()
        _wait("kwok (nodes Ready)", self._nodes_ready, 90, kwok, log)
        self.timings["ready"] = time.monotonic() - t0

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self._own_dir and not os.environ.get("FAULTLINE_K8S_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- pieces ----------------------------------------------------------------------------------------------
    def _keys(self) -> None:
        (self.dir / "certs").mkdir(exist_ok=True)
        subprocess.run(["openssl", "genrsa", "-out", str(self.dir / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(self.dir / "sa.key"), "-pubout", "-out", str(self.dir / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (self.dir / "tokens.csv").write_text(f'{TOKEN},faultline-admin,faultline-admin,"system:masters"\n')

    def _kwok_config(self) -> Path:
        """kwok's stages: its own node-initialize/heartbeat and fast Pod stages, plus one that completes `helm test`
        Pods (kwok completes only Job Pods). The kwok binary embeds none; they come from the kwok module that
        build_binaries.sh downloaded into the Go module cache.
        """
        import yaml

        gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
        version = (BIN / ".kwok.version").read_text().strip() if (BIN / ".kwok.version").exists() else ""
        stage_dir = Path(gomodcache) / f"sigs.k8s.io/kwok@{version}" / "kustomize" / "stage"
        files = [
            "node/fast/node-initialize.yaml",
            "node/heartbeat/node-heartbeat.yaml",
            "pod/fast/pod-ready.yaml",
            "pod/fast/pod-complete.yaml",
            "pod/fast/pod-delete.yaml",
        ]
        missing = [f for f in files if not (stage_dir / f).is_file()]
        if not version or missing:
            raise FileNotFoundError(f"kwok stages not found in {stage_dir}: run deploy/k8s/build_binaries.sh kwok")
        docs = [yaml.safe_load((stage_dir / f).read_text()) for f in files]
        test = yaml.safe_load((stage_dir / "pod/fast/pod-complete.yaml").read_text())
        test["metadata"]["name"] = "helm-test-complete"
        test["spec"]["selector"] = {
            "matchLabels": {"app.kubernetes.io/component": "helm-test"},
            "matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
            ],
        }
        path = self.dir / "kwok.yaml"
        path.write_text(yaml.safe_dump_all([*docs, test], sort_keys=False))
        self.completes_test_pods = True
        return path

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
  - name: faultline
    cluster: {{server: "{self.server}", insecure-skip-tls-verify: true}}
users:
  - name: admin
    user: {{token: "{TOKEN}"}}
contexts:
  - name: faultline
    context: {{cluster: faultline, user: admin, namespace: default}}
current-context: faultline
"""
        )
        self.kubeconfig.chmod(0o600)

    def _get(self, path: str) -> int:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, context=ctx, timeout=5) as response:
            return int(response.status)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One REST call with the admin token; returns the decoded JSON (plain dicts, no client models)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.server + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, context=ctx, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def resource_path(self, api_version: str, kind: str, name: str, namespace: str | None) -> str:
        """The REST path of an object, found through discovery (cached per group version)."""
        if api_version not in self._discovery:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            kinds = {r["kind"]: r for r in self.request("GET", base)["resources"] if "/" not in r["name"]}
            self._discovery[api_version] = (base, kinds)
        base, kinds = self._discovery[api_version]
        resource = kinds[kind]
        scope = f"/namespaces/{namespace}" if resource["namespaced"] and namespace else ""
        return f"{base}{scope}/{resource['name']}/{name}"

    def _default_sa(self) -> bool:
        self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return True

    def _create_nodes(self) -> None:
        for name in GPU_NODES + CPU_NODES:
            gpu = name in GPU_NODES
            capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            }
            taints = []
            if gpu:
                capacity["nvidia.com/gpu"] = "8"
                labels[GPU_LABEL] = "true"
                if name in TAINTED_GPU_NODES:
                    taints.append({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "spec": {"taints": taints},
                "status": {"capacity": capacity, "allocatable": capacity},
            }
            self.request("POST", "/api/v1/nodes", body)

    def _nodes_ready(self) -> bool:
        nodes = self.request("GET", "/api/v1/nodes")["items"]
        ready = [
            n["metadata"]["name"]
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        ]
        return len(ready) == len(GPU_NODES) + len(CPU_NODES)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and keep it running until Ctrl-C")
    up.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    sub.add_parser("check", help="list missing binaries")
    args = parser.parse_args(argv)
    if args.command == "check":
        missing = missing_binaries()
        print(f"missing in {BIN}: {', '.join(missing)}" if missing else f"all binaries present in {BIN}")
        return 1 if missing else 0
    with Cluster(args.dir) as cluster:
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        print("started in " + ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items()), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
