"""Write helm/faultline/values.schema.json (JSON Schema draft-07) for the chart's values.

The five services share one definition so they cannot drift apart; the inference service adds its GPU, model and
HTTP settings. Run `python helm/faultline/tools/gen_schema.py` after changing values.yaml; tests/helm checks that the
committed file is what this script writes and that every value in values.yaml is described here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "values.schema.json"

STR = {"type": "string"}
BOOL = {"type": "boolean"}
OBJ = {"type": "object"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
NAME = {"type": "string", "pattern": "^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"}
INT_OR_PERCENT = {"type": ["string", "integer"], "pattern": "^$|^[0-9]+%?$", "minimum": 0}


def strict(properties: dict, required: list[str] | None = None, description: str | None = None) -> dict:
    out: dict = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


def array_of(item: dict) -> dict:
    return {"type": "array", "items": item}


DEFINITIONS: dict = {
    "image": strict(
        {
            "registry": STR,
            "repository": {"type": "string", "minLength": 1},
            "tag": {"type": ["string", "number"]},
            "digest": {"type": "string", "pattern": "^$|^sha256:[a-f0-9]{64}$"},
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        },
        ["repository"],
    ),
    "probe": strict(
        {
            "enabled": BOOL,
            "initialDelaySeconds": {"type": "integer", "minimum": 0},
            "periodSeconds": {"type": "integer", "minimum": 1},
            "timeoutSeconds": {"type": "integer", "minimum": 1},
            "failureThreshold": {"type": "integer", "minimum": 1},
        },
        ["enabled"],
    ),
    "pdb": strict({"create": BOOL, "minAvailable": INT_OR_PERCENT, "maxUnavailable": INT_OR_PERCENT}, ["create"]),
    "resources": strict(
        {
            "requests": {"type": "object", "additionalProperties": QUANTITY},
            "limits": {"type": "object", "additionalProperties": QUANTITY},
            "claims": array_of(OBJ),
        },
        description="a Kubernetes ResourceRequirements: {requests: {cpu, memory}, limits: {...}}",
    ),
    "envVars": array_of(
        {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}, "value": STR, "valueFrom": OBJ},
            "additionalProperties": False,
        }
    ),
    "toleration": {
        "type": "object",
        "properties": {
            "key": STR,
            "operator": {"enum": ["Exists", "Equal"]},
            "value": STR,
            "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
            "tolerationSeconds": {"type": "integer"},
        },
        "additionalProperties": False,
    },
    "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "args": {"type": "array", "items": STR, "minItems": 1},
}


def ref(name: str) -> dict:
    return {"$ref": f"#/definitions/{name}"}


def service(extra: dict | None = None, ports: dict | None = None, autoscaling: dict | None = None) -> dict:
    ports = ports or {"grpc": PORT}
    props = {
        "enabled": BOOL,
        "replicaCount": {"type": "integer", "minimum": 0},
        "args": ref("args"),
        "containerPorts": strict(ports, list(ports)),
        "service": strict(
            {"type": ref("serviceType"), "ports": strict(ports, list(ports)), "annotations": LABELS}, ["ports"]
        ),
        "resources": ref("resources"),
        "nodeSelector": LABELS,
        "tolerations": array_of(ref("toleration")),
        "affinity": OBJ,
        "priorityClassName": STR,
        "topologySpreadConstraints": array_of(OBJ),
        "podAnnotations": LABELS,
        "podLabels": LABELS,
        "extraEnvVars": ref("envVars"),
        "extraVolumes": array_of(OBJ),
        "extraVolumeMounts": array_of(OBJ),
        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
        "startupProbe": ref("probe"),
        "livenessProbe": ref("probe"),
        "readinessProbe": ref("probe"),
        "pdb": ref("pdb"),
        "autoscaling": autoscaling
        or strict(
            {
                "enabled": BOOL,
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "targetCPU": {"type": "integer", "minimum": 0, "maximum": 100},
                "targetMemory": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            ["enabled"],
        ),
    }
    props.update(extra or {})
    return strict(props, ["enabled"])


INFERENCE = service(
    ports={"grpc": PORT, "http": PORT},
    extra={
        "image": ref("image"),
        "gpu": strict(
            {
                "enabled": BOOL,
                "resourceName": {"type": "string", "pattern": r"^[a-z0-9.-]+/[a-z0-9.-]+$"},
                "count": {"type": "integer", "minimum": 1},
                "nodeSelector": LABELS,
                "tolerations": array_of(ref("toleration")),
            },
            ["enabled", "count"],
        ),
        "runtimeClassName": NAME,
        "shmSize": QUANTITY,
        "model": strict(
            {
                "source": {"enum": ["pvc", "initContainer", "image", "replay"]},
                "mountPath": {"type": "string", "pattern": "^/"},
                "subPath": STR,
                "name": STR,
                "existingClaim": NAME,
                "initContainer": strict(
                    {"image": STR, "command": array_of(STR), "sizeLimit": QUANTITY},
                ),
                "imagePath": {"type": "string", "pattern": "^/"},
                "replayPath": STR,
            },
            ["source"],
        ),
        "attentionBackend": {"enum": ["dense", "hata", "topk_certified", "chelsea"]},
    },
    autoscaling=strict(
        {
            "enabled": BOOL,
            "minReplicas": {"type": "integer", "minimum": 1},
            "maxReplicas": {"type": "integer", "minimum": 1},
            "queueMetric": strict(
                {"name": {"type": "string", "minLength": 1}, "targetAverageValue": QUANTITY}, ["name"]
            ),
            "targetCPU": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        ["enabled"],
    ),
)

PERSISTENCE = strict(
    {
        "enabled": BOOL,
        "existingClaim": NAME,
        "storageClass": STR,
        "size": QUANTITY,
        "accessModes": array_of({"enum": ["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]}),
    }
)

DETECTOR = service(
    extra={
        "persistence": PERSISTENCE,
        "mitigations": strict(
            {
                "kubernetes": strict(
                    {"enabled": BOOL, "namespaces": array_of(NAME), "cordonNodes": BOOL},
                    ["enabled"],
                )
            }
        ),
    }
)

SCHEMA: dict = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Faultline chart values",
    "type": "object",
    "additionalProperties": False,
    "definitions": DEFINITIONS,
    "properties": {
        "global": strict({"imageRegistry": STR, "imagePullSecrets": array_of(STR)}),
        "nameOverride": STR,
        "fullnameOverride": STR,
        "commonLabels": LABELS,
        "commonAnnotations": LABELS,
        "image": ref("image"),
        "kafka": strict(
            {
                "bootstrapServers": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": r"^[^,\s]+:[0-9]+(,[^,\s]+:[0-9]+)*$",
                    "description": "comma-separated host:port list",
                },
                "securityProtocol": {"enum": ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]},
                "clientId": {"type": "string", "minLength": 1},
                "sasl": strict(
                    {
                        "mechanism": {"enum": ["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]},
                        "existingSecret": NAME,
                        "usernameKey": STR,
                        "passwordKey": STR,
                    }
                ),
                "tls": strict({"existingSecret": NAME, "caKey": STR, "certKey": STR, "keyKey": STR}),
                "topics": strict(
                    {
                        "create": BOOL,
                        "replicationFactor": {"type": "integer", "minimum": 1},
                        "partitions": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
                        "names": strict(
                            {
                                k: {"type": "string", "pattern": r"^[A-Za-z0-9._-]+$"}
                                for k in (
                                    "spans",
                                    "states",
                                    "alerts",
                                    "incidents",
                                    "mitigations",
                                    "rcaReports",
                                    "documents",
                                    "kgUpdates",
                                )
                            }
                        ),
                        "job": strict(
                            {
                                "backoffLimit": {"type": "integer", "minimum": 0},
                                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                                "resources": ref("resources"),
                            }
                        ),
                    }
                ),
            },
            ["bootstrapServers"],
        ),
        "auth": strict({"existingSecret": NAME, "tokenKey": STR}),
        "grpcTls": strict({"existingSecret": NAME}),
        "llm": strict({"baseUrl": {"type": "string", "pattern": "^$|^https?://"}, "model": STR}),
        "logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
        "extraEnvVars": ref("envVars"),
        "extraEnvVarsSecret": NAME,
        "extraEnvVarsCM": NAME,
        "podSecurityContext": strict(
            {
                "enabled": BOOL,
                "runAsNonRoot": {"const": True, "description": "the services never run as root"},
                "runAsUser": {"type": "integer", "minimum": 1},
                "runAsGroup": {"type": "integer", "minimum": 1},
                "fsGroup": {"type": "integer", "minimum": 0},
                "seccompProfile": strict({"type": {"enum": ["RuntimeDefault", "Localhost", "Unconfined"]}}),
            }
        ),
        "containerSecurityContext": strict(
            {
                "enabled": BOOL,
                "runAsNonRoot": {"const": True, "description": "the services never run as root"},
                "readOnlyRootFilesystem": BOOL,
                "allowPrivilegeEscalation": {"const": False, "description": "privilege escalation is never needed"},
                "privileged": {"const": False, "description": "the services never run privileged"},
                "capabilities": strict({"drop": array_of(STR), "add": array_of(STR)}),
            }
        ),
        "serviceAccount": strict({"create": BOOL, "annotations": LABELS, "automountServiceAccountToken": BOOL}),
        "metrics": strict(
            {
                "enabled": BOOL,
                "port": PORT,
                "serviceMonitor": strict(
                    {
                        "enabled": BOOL,
                        "namespace": NAME,
                        "labels": LABELS,
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "honorLabels": BOOL,
                        "metricRelabelings": array_of(OBJ),
                        "relabelings": array_of(OBJ),
                    }
                ),
            }
        ),
        "networkPolicy": strict(
            {
                "enabled": BOOL,
                "kafkaEgress": array_of(OBJ),
                "dnsEgress": BOOL,
                "kubeApiServerEgress": array_of(OBJ),
                "metricsFrom": array_of(OBJ),
                "clientsFrom": array_of(OBJ),
                "extraEgress": array_of(OBJ),
            }
        ),
        "cpuNodeAffinity": strict({"enabled": BOOL, "gpuNodeLabel": {"type": "string", "minLength": 1}}),
        "inference": INFERENCE,
        "embedding": service(extra={"persistence": PERSISTENCE}),
        "detector": DETECTOR,
        "rca": service(),
        "kgBuilder": service(extra={"persistence": PERSISTENCE}),
        "tests": strict(
            {"enabled": BOOL, "prompt": STR, "timeoutSeconds": {"type": "integer", "minimum": 1}},
        ),
    },
}


def render() -> str:
    return json.dumps(SCHEMA, indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run python {Path(__file__).relative_to(Path.cwd())}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
