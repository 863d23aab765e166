"""Generate Python code for everything under ``protos/`` (run by ``make protos``).

protoc names Python modules after the import path of each ``.proto`` (``faultline.v1``).
The generated tree lives inside ``services.common.pb`` so that every service imports it as
one package; the absolute imports protoc writes are rewritten to that package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = ROOT / "services" / "common" / "pb"
PACKAGE = "services.common.pb"


def _rewrite_imports(path: Path, top_packages: set[str]) -> None:
    text = path.read_text()
    for top in top_packages:
        text = re.sub(rf"^from {top}(\.| )", rf"from {PACKAGE}.{top}\1", text, flags=re.M)
        text = re.sub(rf"^import {top}\.", rf"import {PACKAGE}.{top}.", text, flags=re.M)
    path.write_text(text)


def generate() -> list[Path]:
    sources = sorted(PROTOS.rglob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTOS}")
    OUT.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    plugins = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside the interpreter
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *(str(s) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    top_packages = {s.relative_to(PROTOS).parts[0] for s in sources}
    generated = sorted(p for p in OUT.rglob("*") if p.suffix in {".py", ".pyi"})
    for path in generated:
        _rewrite_imports(path, top_packages)
    # Every folder becomes a regular package so that setuptools and mypy see it.
    for folder in [OUT, *(d for d in OUT.rglob("*") if d.is_dir())]:
        (folder / "__init__.py").touch()
    return generated


if __name__ == "__main__":
    files = generate()
    print(f"generated {len(files)} files into {OUT.relative_to(ROOT)}", file=sys.stderr)
