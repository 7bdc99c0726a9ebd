"""Privacy: neither the ``lto`` command nor an optimizer step writes anything under the user's home.

onnxruntime, unless ``ORT_DISABLE_TELEMETRY=1`` is set before it is first imported, writes a device
id and queued telemetry events under ``~/.cache/Microsoft/``. Each check runs in a fresh process
with a temporary ``HOME`` and an environment that does not set the variable, as a user's would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STEP = textwrap.dedent(
    """
    import numpy as np
    from lto_adapters.numpy import LTO

    params = {"w": np.ones(5, np.float32)}
    opt = LTO(params, lr=1e-3)
    opt.step({"w": np.ones(5, np.float32)})
    print(float(params["w"][0]))
    """
)


def _user_env(home: Path) -> dict[str, str]:
    """This process's environment with ``home`` as ``HOME``, no telemetry switch and no XDG
    overrides, so every per-user cache or config path falls under ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY" and not k.startswith("XDG_")}
    env["HOME"] = str(home)
    return env


def _lto_command() -> list[str]:
    """The installed ``lto`` script beside this interpreter (what a user runs), else the module."""
    script = Path(sys.executable).with_name("lto")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lto_export.cli"]


def _files_under(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_lto_help_writes_nothing_under_home(home: Path, tmp_path: Path):
    result = subprocess.run([*_lto_command(), "--help"], capture_output=True, text=True, env=_user_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bench" in result.stdout
    assert _files_under(home) == []


def test_optimizer_step_writes_nothing_under_home(home: Path, tmp_path: Path):
    result = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, env=_user_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1.0  # the step really ran through onnxruntime and moved the parameter
    assert _files_under(home) == []


def test_a_users_own_telemetry_setting_is_kept(home: Path, tmp_path: Path):
    code = "import os, lto_runtime; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    env = {**_user_env(home), "ORT_DISABLE_TELEMETRY": "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
