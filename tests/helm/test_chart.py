"""The chart on its own: lint, render, schema, and the switches platform teams rely on (rendered-manifest tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helm.conftest import CHART, helm, render

CI = CHART / "ci"
VALUE_FILES = {
    "default": [],
    "gpu": ["-f", str(CI / "gpu-values.yaml")],
    "cpu-only": ["-f", str(CI / "cpu-only-values.yaml")],
}
BAD = sorted((CI / "bad").glob("*.yaml"))
SERVICES = ("inference", "embedding", "detector", "rca", "kg-builder")
CPU_SERVICES = SERVICES[1:]
KEYS = {
    "inference": "inference",
    "embedding": "embedding",
    "detector": "detector",
    "rca": "rca",
    "kg-builder": "kgBuilder",
}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"].get("app.kubernetes.io/component", "")


def by_component(docs: list[dict], kind: str) -> dict[str, dict]:
    return {component(d): d for d in of_kind(docs, kind)}


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((f"Pod/{d['metadata']['name']}", d["spec"]))
    return out


# ---- lint and render -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(VALUE_FILES))
def test_lint_strict(name: str) -> None:
    result = helm("lint", "--strict", str(CHART), *VALUE_FILES[name])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", sorted(VALUE_FILES))
def test_template_renders_every_service(name: str) -> None:
    docs = render(*VALUE_FILES[name])
    assert set(by_component(docs, "Deployment")) == set(SERVICES)
    assert set(by_component(docs, "Service")) == set(SERVICES)
    for doc in docs:
        assert doc["metadata"]["name"] and len(doc["metadata"]["name"]) <= 63


@pytest.mark.parametrize("tool", ["gen_schema.py", "gen_readme.py"])
def test_generated_files_are_current(tool: str) -> None:
    proc = subprocess.run([sys.executable, str(CHART / "tools" / tool), "--check"], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def _leaves(value: object, path: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}" if path else k)]
    return [path]


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+)", text, flags=re.M))
    undocumented = [
        leaf
        for leaf in _leaves(yaml.safe_load(text))
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert not undocumented, f"values without an ## @param line: {undocumented}"


# ---- the schema and cross-field rules reject bad values readably -----------------------------------------------
@pytest.mark.parametrize("bad", BAD, ids=[p.stem for p in BAD])
def test_bad_values_are_rejected_with_a_readable_message(bad: Path) -> None:
    expected = re.findall(r"^# expect: (.+)$", bad.read_text(), flags=re.M)
    assert expected, f"{bad.name} names no expected message"
    result = helm("template", "fl", str(CHART), "-f", str(bad), check=False)
    assert result.returncode != 0, f"{bad.name} was accepted"
    for text in expected:
        assert text in result.stderr, f"{bad.name}: {text!r} not in:\n{result.stderr}"
    if "# rule: template" not in bad.read_text():  # schema errors fail helm lint too
        lint = helm("lint", str(CHART), "-f", str(bad), check=False)
        assert lint.returncode != 0, f"helm lint accepted {bad.name}"


# ---- GPU placement -----------------------------------------------------------------------------------------
def test_gpu_requests_and_placement_only_on_inference(default_docs: list[dict]) -> None:
    deployments = by_component(default_docs, "Deployment")
    inference = deployments["inference"]["spec"]["template"]["spec"]
    container = inference["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert inference["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in inference["tolerations"]
    volumes = {v["name"]: v for v in inference["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert volumes["model"]["persistentVolumeClaim"]["claimName"] == "faultline-models"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200, "model loading needs a long startup probe"
    for name in CPU_SERVICES:
        spec = deployments[name]["spec"]["template"]["spec"]
        limits = spec["containers"][0]["resources"].get("limits", {})
        assert "nvidia.com/gpu" not in limits
        assert "tolerations" not in spec
        term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term == [{"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]}]


def test_gpu_values_file() -> None:
    docs = render(*VALUE_FILES["gpu"])
    spec = by_component(docs, "Deployment")["inference"]["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"


def test_cpu_only_values_have_no_gpu_anything() -> None:
    docs = render(*VALUE_FILES["cpu-only"])
    spec = by_component(docs, "Deployment")["inference"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(spec)
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["FAULTLINE_MODEL_PATH"] == "/app/services/inference/checkpoints/retrieval-lm"
    assert not of_kind(docs, "NetworkPolicy") and not of_kind(docs, "PodDisruptionBudget")


def test_model_from_an_init_container() -> None:
    docs = render(
        "--set", "inference.model.source=initContainer",
        "--set", "inference.model.initContainer.image=registry.local/model-sync:1",
        "--set", "inference.model.initContainer.command={sh,-c,cp -r /weights/. $MODEL_DIR}",
    )  # fmt: skip
    spec = by_component(docs, "Deployment")["inference"]["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["image"] == "registry.local/model-sync:1"
    assert {v["name"]: v for v in spec["volumes"]}["model"]["emptyDir"]["sizeLimit"] == "100Gi"


def test_the_agents_carry_the_release_token_to_its_inference_api() -> None:
    def llm_key(docs: list[dict], name: str) -> dict | None:
        container = by_component(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e for e in container["env"]}.get("FAULTLINE_LLM_API_KEY")

    docs = render("--set", "auth.existingSecret=fl-token")
    for name in ("rca", "kg-builder"):  # inference's HTTP API asks for the same bearer token as its gRPC
        key = llm_key(docs, name)
        assert key is not None and key["valueFrom"]["secretKeyRef"]["name"] == "fl-token"
    assert llm_key(render(), "rca") is None  # no auth: nothing to send


# ---- switches --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SERVICES)
def test_disabled_service_renders_nothing(name: str) -> None:
    docs = render("--set", f"{KEYS[name]}.enabled=false")
    assert not [d for d in docs if component(d) == name]
    test_pod = of_kind(docs, "Pod")[0]
    targets = {e["name"]: e.get("value", "") for e in test_pod["spec"]["containers"][0]["env"]}["TARGETS"]
    assert f"{name}=" not in targets


def test_probes_are_native_grpc_with_numeric_ports(default_docs: list[dict]) -> None:
    for name, deployment in by_component(default_docs, "Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            spec = container[probe]
            if name == "inference" and probe == "readinessProbe":
                assert spec["httpGet"] == {"path": "/health", "port": 8000}
                continue
            assert spec["grpc"]["port"] == grpc_port and isinstance(spec["grpc"]["port"], int), (name, probe)
    ports = {
        n: d["spec"]["template"]["spec"]["containers"][0]["ports"]
        for n, d in by_component(default_docs, "Deployment").items()
    }
    assert {p["containerPort"] for p in ports["inference"]} == {8000, 8001, 9464}


def test_services_listen_on_all_interfaces(default_docs: list[dict]) -> None:
    for name, deployment in by_component(default_docs, "Deployment").items():
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["FAULTLINE_GRPC__HOST"] == "0.0.0.0", name
        assert env["FAULTLINE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka.kafka.svc.cluster.local:9092"
    inference = by_component(default_docs, "Deployment")["inference"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in inference["env"]}["FAULTLINE_HTTP_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(VALUE_FILES))
def test_security_contexts_everywhere(name: str) -> None:
    docs = render(*VALUE_FILES[name])
    specs = pod_specs(docs)
    assert {kind.split("/")[0] for kind, _ in specs} == {"Deployment", "Job", "Pod"}
    for what, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec["securityContext"]["runAsUser"] == 10001, what
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"], what
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), f"{what}: no writable /tmp"


def test_no_rbac_and_no_api_token_by_default(default_docs: list[dict]) -> None:
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    for what, spec in pod_specs(default_docs):
        assert spec["automountServiceAccountToken"] is False, what
    env = {
        e["name"]: e.get("value")
        for e in by_component(default_docs, "Deployment")["detector"]["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["FAULTLINE_KUBERNETES_ENABLED"] == "false"


def test_detector_mitigations_get_exactly_their_verbs() -> None:
    docs = render("--set", "detector.mitigations.kubernetes.enabled=true")
    roles = of_kind(docs, "Role")
    assert len(roles) == 1 and roles[0]["metadata"]["namespace"] == "faultline"
    rules = {tuple(r["resources"]): sorted(r["verbs"]) for r in roles[0]["rules"]}
    assert rules == {("deployments",): ["patch"], ("deployments/scale",): ["get", "patch"]}
    assert all(r["apiGroups"] == ["apps"] for r in roles[0]["rules"])
    assert not of_kind(docs, "ClusterRole"), "cordon is a separate opt-in"
    binding = of_kind(docs, "RoleBinding")[0]
    assert binding["subjects"][0]["name"] == "fl-faultline-detector"
    detector = by_component(docs, "Deployment")["detector"]["spec"]["template"]["spec"]
    assert (
        detector["automountServiceAccountToken"] is True and detector["serviceAccountName"] == "fl-faultline-detector"
    )
    others = [d for d in of_kind(docs, "Deployment") if component(d) != "detector"]
    assert all(d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False for d in others)

    docs = render(*VALUE_FILES["gpu"])
    assert sorted(r["metadata"]["namespace"] for r in of_kind(docs, "Role")) == ["payments", "shop"]
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}]


def test_secrets_are_referenced_never_inlined() -> None:
    docs = render(*VALUE_FILES["gpu"])
    assert not of_kind(docs, "ConfigMap") and not of_kind(docs, "Secret")
    env = by_component(docs, "Deployment")["rca"]["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["FAULTLINE_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "faultline-kafka-sasl",
        "key": "password",
    }
    assert by_name["FAULTLINE_GRPC__AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "faultline-grpc-token"
    assert by_name["FAULTLINE_KAFKA__SSL_CAFILE"]["value"] == "/etc/faultline/kafka-tls/ca.crt"


def test_pdbs_default_to_one_unavailable(default_docs: list[dict]) -> None:
    pdbs = by_component(default_docs, "PodDisruptionBudget")
    assert set(pdbs) == set(SERVICES)
    assert all(p["spec"] == {"maxUnavailable": 1, "selector": p["spec"]["selector"]} for p in pdbs.values())
    assert by_component(render(*VALUE_FILES["gpu"]), "PodDisruptionBudget")["inference"]["spec"]["minAvailable"] == 1


def test_autoscaling_cpu_for_cpu_services_queue_for_inference() -> None:
    docs = render(*VALUE_FILES["gpu"], "--api-versions", "custom.metrics.k8s.io/v1beta1")
    hpas = by_component(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"inference", "rca"}  # never the embedding: one replica slices every partition
    assert hpas["inference"]["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "faultline_inference_queue_length"},
                "target": {"type": "AverageValue", "averageValue": "4"},
            },
        }
    ]
    assert hpas["rca"]["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}}}
    ]
    deployments = by_component(docs, "Deployment")
    assert "replicas" not in deployments["rca"]["spec"]
    assert deployments["embedding"]["spec"]["replicas"] == 1
    # Without the custom metrics API and without a CPU target there is nothing to scale inference on.
    assert "inference" not in by_component(render(*VALUE_FILES["gpu"]), "HorizontalPodAutoscaler")


def test_service_monitors(default_docs: list[dict]) -> None:
    assert not of_kind(default_docs, "ServiceMonitor")
    monitors = by_component(render(*VALUE_FILES["gpu"]), "ServiceMonitor")
    assert set(monitors) == set(SERVICES)
    assert monitors["detector"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitors["detector"]["spec"]["endpoints"][0]["port"] == "metrics"


def test_topic_job_is_a_hook_running_faultline_topics(default_docs: list[dict]) -> None:
    (job,) = of_kind(default_docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["topics", "--replication-factor", "3"]
    gpu_job = of_kind(render(*VALUE_FILES["gpu"]), "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert gpu_job["command"] == ["python", "-c"] and "with_dead_letters" in gpu_job["args"][0]
    env = {e["name"]: e.get("value") for e in gpu_job["env"]}
    assert yaml.safe_load(env["FAULTLINE_TOPIC_PARTITIONS"]) == {"otlp_metrics": 12, "otlp_spans": 12}
    assert not of_kind(render("--set", "kafka.topics.create=false"), "Job")


def _peers(rule: dict) -> set[str]:
    return {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in rule.get("from", rule.get("to", []))
        if "podSelector" in p
    }


def test_network_policies_open_only_the_architecture_paths(default_docs: list[dict]) -> None:
    policies = by_component(default_docs, "NetworkPolicy")
    assert set(policies) == set(SERVICES)
    ingress = {name: _peers(p["spec"]["ingress"][0]) for name, p in policies.items()}
    assert ingress == {
        "inference": {"helm-test", "detector", "rca", "kg-builder"},
        "embedding": {"helm-test"},
        "detector": {"helm-test"},
        "rca": {"helm-test"},
        "kg-builder": {"helm-test", "detector"},
    }
    egress = {name: set().union(*(_peers(r) for r in p["spec"]["egress"])) for name, p in policies.items()}
    assert egress == {
        "inference": set(),
        "embedding": set(),
        "detector": {"inference", "kg-builder"},
        "rca": {"inference"},
        "kg-builder": {"inference"},
    }
    api_ports = {6443, 443}
    for name, policy in policies.items():
        ports = {p["port"] for r in policy["spec"]["egress"] for p in r.get("ports", [])}
        assert not api_ports & ports, f"{name} may reach the API server"
    detector = by_component(render("--set", "detector.mitigations.kubernetes.enabled=true"), "NetworkPolicy")[
        "detector"
    ]
    assert api_ports <= {p["port"] for r in detector["spec"]["egress"] for p in r.get("ports", [])}


def test_helm_test_pod(default_docs: list[dict]) -> None:
    (pod,) = of_kind(default_docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["TARGETS"].split() == [
        "detector=fl-faultline-detector:50054",
        "embedding=fl-faultline-embedding:50053",
        "inference=fl-faultline-inference:8001",
        "kg-builder=fl-faultline-kg-builder:50056",
        "rca=fl-faultline-rca:50055",
    ]
    assert env["INFERENCE_URL"] == "http://fl-faultline-inference:8000"
    compile(pod["spec"]["containers"][0]["args"][0], "helm-test", "exec")  # the check script is valid Python


def test_images(default_docs: list[dict]) -> None:
    images = {
        n: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for n, d in by_component(default_docs, "Deployment").items()
    }
    assert images["inference"] == "ghcr.io/faultline/faultline-cuda:0.1.0"
    assert {images[n] for n in CPU_SERVICES} == {"ghcr.io/faultline/faultline:0.1.0"}
    digest = "sha256:" + "a" * 64
    docs = render("--set", "global.imageRegistry=registry.corp", "--set", f"image.digest={digest}")
    assert (
        by_component(docs, "Deployment")["rca"]["spec"]["template"]["spec"]["containers"][0]["image"]
        == f"registry.corp/faultline/faultline@{digest}"
    )


def _env(docs: list[dict], name: str) -> dict[str, str | None]:
    container = by_component(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_agents_call_this_release_inference_or_the_configured_llm(default_docs: list[dict]) -> None:
    for name in ("rca", "kg-builder"):
        env = _env(default_docs, name)
        assert env["FAULTLINE_LLM_BASE_URL"] == "http://fl-faultline-inference:8000/v1"
        assert env["FAULTLINE_LLM_MODEL"] == "model"
    assert _env(render(*VALUE_FILES["gpu"]), "rca")["FAULTLINE_LLM_MODEL"] == "qwen2.5-7b"
    assert _env(render(*VALUE_FILES["cpu-only"]), "kg-builder")["FAULTLINE_LLM_MODEL"] == "retrieval-lm"
    assert "FAULTLINE_LLM_BASE_URL" not in _env(render("--set", "inference.enabled=false"), "rca")
    docs = render("--set", "llm.baseUrl=https://llm.corp/v1", "--set", "llm.model=gpt-x")
    assert _env(docs, "kg-builder")["FAULTLINE_LLM_BASE_URL"] == "https://llm.corp/v1"


def _data_volume(docs: list[dict], name: str) -> dict:
    spec = by_component(docs, "Deployment")[name]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/var/lib/faultline", name
    return {v["name"]: v for v in spec["volumes"]}["data"]


def test_stateful_services_write_to_their_data_volume(default_docs: list[dict]) -> None:
    assert _env(default_docs, "kg-builder")["FAULTLINE_STORE_PATH"] == "/var/lib/faultline/kg-builder/kg.sqlite"
    assert _env(default_docs, "detector")["FAULTLINE_DATA_DIR"] == "/var/lib/faultline/detector"
    # The embedding's stream state (services/embedding/main.py state_path): an emptyDir keeps it across restarts.
    assert _env(default_docs, "embedding")["FAULTLINE_STATE_PATH"] == "/var/lib/faultline/embedding/state.pickle"
    for name in ("embedding", "detector", "kg-builder"):
        assert _data_volume(default_docs, name) == {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}
    for name in ("inference", "rca"):
        spec = by_component(default_docs, "Deployment")[name]["spec"]["template"]["spec"]
        assert "data" not in {v["name"] for v in spec["volumes"]}, name
    assert not of_kind(default_docs, "PersistentVolumeClaim")
    # One embedding Pod at a time, also during a rollout (a surge Pod would share the partitions and the state).
    assert by_component(default_docs, "Deployment")["embedding"]["spec"]["strategy"] == {"type": "Recreate"}

    docs = render(
        *("--set", "kgBuilder.persistence.enabled=true", "--set", "detector.persistence.enabled=true"),
        *("--set", "embedding.persistence.enabled=true", "--set", "embedding.persistence.storageClass=fast"),
    )
    claims = {d["metadata"]["name"]: d for d in of_kind(docs, "PersistentVolumeClaim")}
    assert set(claims) == {"fl-faultline-embedding", "fl-faultline-kg-builder", "fl-faultline-detector"}
    assert claims["fl-faultline-embedding"]["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast",
        "resources": {"requests": {"storage": "1Gi"}},
    }
    assert claims["fl-faultline-embedding"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name in ("embedding", "kg-builder"):
        assert _data_volume(docs, name)["persistentVolumeClaim"]["claimName"] == f"fl-faultline-{name}"
    assert _env(docs, "embedding")["FAULTLINE_STATE_PATH"] == "/var/lib/faultline/embedding/state.pickle"

    docs = render("--set", "embedding.persistence.enabled=true", "--set", "embedding.persistence.existingClaim=mine")
    assert not of_kind(docs, "PersistentVolumeClaim")
    assert _data_volume(docs, "embedding")["persistentVolumeClaim"]["claimName"] == "mine"
    # The GPU example keeps the embedding's state on a PVC.
    gpu = render(*VALUE_FILES["gpu"])
    assert _data_volume(gpu, "embedding")["persistentVolumeClaim"]["claimName"] == "fl-faultline-embedding"
