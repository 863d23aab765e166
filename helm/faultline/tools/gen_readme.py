"""Write helm/faultline/README.md's parameter tables from the `## @param` lines of values.yaml (Bitnami style).

Run `python helm/faultline/tools/gen_readme.py` after changing values.yaml; `--check` fails when it is stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1]
README = CHART / "README.md"

HEAD = """# Faultline Helm chart

Installs the Faultline services (inference on GPU nodes; embedding, detector, rca and kg-builder on CPU nodes)
into a cluster that already runs Kafka. See the repository README's "Helm chart" section for how it is tested
(`make test-helm`), `ci/gpu-values.yaml` and `ci/cpu-only-values.yaml` for two complete examples, and `ci/bad/`
for values the schema and templates reject.

```
helm install faultline helm/faultline -n faultline --create-namespace \\
  --set kafka.bootstrapServers=kafka-0.kafka:9092 --set inference.model.existingClaim=llm-weights
helm test faultline -n faultline
```

This file is generated from values.yaml by tools/gen_readme.py.

## Parameters
"""


def _lookup(values: dict, path: str) -> object:
    node: object = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def render() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    out = [HEAD]
    rows: list[str] = []
    for line in text.splitlines():
        section = re.match(r"^\s*## @section (.+)$", line)
        param = re.match(r"^\s*## @param (\S+) (.+)$", line)
        if section:
            if rows:
                out.append("\n".join(rows) + "\n")
            rows = [f"### {section.group(1)}\n", "| name | description | default |", "|---|---|---|"]
        elif param:
            name, description = param.groups()
            default = json.dumps(_lookup(values, name)).replace("|", "\\|")
            rows.append(f"| `{name}` | {description.replace('|', '/')} | `{default}` |")
    if rows:
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not README.exists() or README.read_text() != text:
            print(f"{README} is stale: run python helm/faultline/tools/gen_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
