"""Every script in examples/ runs in its --quick mode and prints what its tutorial page promises.

Each script runs in a fresh subprocess, as a user would run it, from the repository root. A script
added to examples/ is picked up automatically; if it is not in ``EXPECTED`` it must at least exit 0
and print something.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

#: Per script: regular expressions its --quick output must match (``re.MULTILINE``).
EXPECTED: dict[str, tuple[str, ...]] = {
    "pytorch_dropin.py": (
        r"^LTO  epoch  2: train loss \d+\.\d{4}, test accuracy \d\.\d{3}$",
        r"^final test accuracy: Adam 0\.(?:[7-9])\d\d, LTO 0\.(?:[7-9])\d\d$",
        r"^LTO resumed from a saved checkpoint takes the same next step: True$",
    ),
    "continual_digits.py": (
        r"^LTO: accuracy matrix",
        r"^Adam\s+\d\.\d{3}\s+[+-]\d\.\d{3}\s+[+-]\d\.\d{3}$",
        r"^LTO\s+\d\.\d{3}\s+[+-]\d\.\d{3}\s+[+-]\d\.\d{3}$",
    ),
    "numpy_loop.py": (
        r"^final test accuracy: 0\.[89]\d\d after 100 steps$",
        r"^torch imported: False$",
    ),
    "export_validate.py": (
        r"^validation: .* -> PASS \(tolerance 1e-05\)$",
        r"^your file\s+\d\.\d{3}\s+[+-]\d\.\d{3}$",
    ),
    "meta_train_own_family.py": (
        r"^meta-trained 2 iterations \(4 problems\) in \d+ s$",
        r"^  Adam\s+\d\.\d{3} [+-]\d\.\d{3}$",
        r"^your optimizer\s+\d\.\d{3}\s+[+-]\d\.\d{3}$",
    ),
    "keras_continual.py": (
        r"^LTO \(.*\): accuracy matrix",
        r"^LTO\s+\d\.\d{3}\s+[+-]\d\.\d{3}\s+[+-]\d\.\d{3}$",
    ),
    # Both task changes found within 20 steps (the detector waits for 10 in a row), with no boundary given.
    "task_free.py": (
        r"^tasks change after steps \[120, 240\]$",
        r"^LTO found task changes at steps \[1[23][0-9], 2(?:[45][0-9]|60)\]$",
        r"^LTO, auto\s+\d\.\d{3}\s+[+-]\d\.\d{3}$",
    ),
    # The optax and torch front ends on the same stream, weights and batches: ACC within 0.01.
    "optax_digits.py": (
        r"^lto \(optax\)\s+\d\.\d{3}\s+[+-]\d\.\d{3}\s+[+-]\d\.\d{3}$",
        r"^lto \(torch\)\s+\d\.\d{3}\s+[+-]\d\.\d{3}\s+[+-]\d\.\d{3}$",
        r"^ACC, lto \(optax\) - lto \(torch\): [+-]0\.00\d ",
    ),
}

#: Scripts that need an optional framework, and the module whose absence skips them.
REQUIRES: dict[str, str] = {"keras_continual.py": "keras", "optax_digits.py": "optax"}


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ORT_DISABLE_TELEMETRY="1",
        KERAS_BACKEND="torch",
        KERAS_HOME=str(tmp_path / "keras-home"),
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
    )
    return env


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    for required in ("pytorch_dropin.py", "continual_digits.py", "numpy_loop.py", "export_validate.py", "meta_train_own_family.py"):
        assert required in names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_quick(script: Path, tmp_path: Path):
    module = REQUIRES.get(script.name)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{script.name} needs {module}, which is not installed")
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    shown = f"--- stdout ---\n{result.stdout}\n--- stderr (last 3000 chars) ---\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{script.name} --quick exited with {result.returncode}\n{shown}"
    assert result.stdout.strip(), f"{script.name} --quick printed nothing\n{shown}"
    for pattern in EXPECTED.get(script.name, ()):
        assert re.search(pattern, result.stdout, flags=re.MULTILINE), f"{script.name}: no line matches {pattern!r}\n{shown}"
