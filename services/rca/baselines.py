"""RCAEval's baselines (BARO, n-sigma on metrics; MicroRank, TraceRCA on traces) on the same case directories.

RCAEval registers its methods only on Python 3.10/3.12, so they run in a separate virtual
environment (``~/.cache/faultline/rcaeval-venv``, created on first use from pyenv's 3.12 or
3.10) through :mod:`services.rca.baselines_runner` in a subprocess. If that environment cannot
be made, the baselines are skipped with the reason, never failing the evaluation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(os.environ.get("FAULTLINE_RCAEVAL_VENV", Path.home() / ".cache" / "faultline" / "rcaeval-venv"))
PACKAGES = ("RCAEval==1.8.1", "pandas", "numpy", "scikit-learn", "networkx", "requests", "tqdm")
METHODS = ("baro", "nsigma", "microrank", "tracerca")
RUNNER = Path(__file__).with_name("baselines_runner.py")


def _interpreter() -> str | None:
    candidates = [shutil.which("python3.12"), shutil.which("python3.10")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        candidates += [str(p / "bin" / "python") for p in sorted(pyenv.glob("3.1[02].*"), reverse=True)]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def ensure_venv() -> tuple[Path | None, str]:
    """The venv's python, or None and why not."""
    python = VENV / "bin" / "python"
    if python.is_file():
        return python, "ready"
    base = _interpreter()
    if base is None:
        return None, "no Python 3.10 or 3.12 found (RCAEval's methods register only there); baselines skipped"
    print(f"creating the RCAEval environment in {VENV} (one time, a minute or two) ...", file=sys.stderr, flush=True)
    try:
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        shutil.rmtree(VENV, ignore_errors=True)
        return None, f"could not create the RCAEval environment ({error}); baselines skipped"
    return python, "created"


def start(cases: list[Path]) -> tuple[subprocess.Popen[str] | None, str]:
    """Starts the baselines on ``cases`` in the background (they run beside RCLAgent)."""
    python, status = ensure_venv()
    if python is None:
        return None, status
    env = {**os.environ, "TQDM_DISABLE": "1"}
    process = subprocess.Popen(
        [str(python), str(RUNNER), *map(str, cases)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    return process, status


def collect(process: subprocess.Popen[str]) -> dict[tuple[str, str], dict[str, object]]:
    """(case dir, method) -> {"ranks": [...], "seconds": s} or {"error": ...}."""
    out: dict[tuple[str, str], dict[str, object]] = {}
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            row = json.loads(line)
            out[(row["case"], row["method"])] = row
    process.wait()
    return out
