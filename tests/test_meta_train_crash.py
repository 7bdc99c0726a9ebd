"""Meta-training killed between its checkpoint writes resumes exactly (real processes, real files).

Each run is a real ``lto meta-train`` process. :data:`~lto_core.checkpoint.EXIT_AFTER_WRITING_ENV`
ends a process with ``os._exit`` (no cleanup, as a kill) right after it has written a named file,
so the interruption lands deterministically between two writes of one iteration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lto_core.checkpoint import EXIT_AFTER_WRITING_ENV, EXIT_AFTER_WRITING_STATUS, write_atomically
from lto_core.meta_train import meta_train

from test_meta_train import _config

#: The smallest run that validates (and so may write ``best``) before and after the interruptions.
ITERATIONS = 4


def _meta_train(out, config_file, *extra: str, exit_after: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(EXIT_AFTER_WRITING_ENV, None)
    if exit_after is not None:
        env[EXIT_AFTER_WRITING_ENV] = exit_after
    command = [sys.executable, "-c", "from lto_export.cli import main; main()", "meta-train", "--out", str(out), "--config", str(config_file), "--seed", "1", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _run_state(out) -> dict:
    """Everything a run leaves that resuming or a user reads: progress (less wall time) and every
    tensor of the recorded set, of ``last`` and of ``best``."""
    progress = json.loads((out / "progress.json").read_text())
    progress.pop("seconds")
    name = progress["checkpoint"]
    files = {f"{name}.safetensors", f"{name}-outer.safetensors", "last.safetensors", "best.safetensors"}
    return {"progress": progress, **{f: load_file(str(out / f)) for f in files if (out / f).exists()}}


def _assert_same(a: dict, b: dict) -> None:
    assert a["progress"] == b["progress"]
    assert a.keys() == b.keys()
    for name in a.keys() - {"progress"}:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def test_run_killed_between_its_writes_resumes_to_the_uninterrupted_result(tmp_path):
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(_config(iterations=ITERATIONS).to_dict()))
    whole = _meta_train(tmp_path / "whole", config_file)
    assert whole.returncode == 0, whole.stderr
    expected = _run_state(tmp_path / "whole")
    assert expected["progress"]["iteration"] == ITERATIONS and expected["progress"]["checkpoint"] == f"resume-{ITERATIONS:06d}"

    cut = tmp_path / "cut"
    # Killed with iteration 2's weights written but not its outer Adam state nor its record: the
    # record still names iteration 1's set, so the resumed run replays iteration 2 from there.
    first = _meta_train(cut, config_file, exit_after="resume-000002.safetensors")
    assert first.returncode == EXIT_AFTER_WRITING_STATUS, first.stderr
    assert json.loads((cut / "progress.json").read_text())["checkpoint"] == "resume-000001"
    assert (cut / "resume-000002.safetensors").is_file() and not (cut / "resume-000002-outer.safetensors").exists()
    # Killed with the replayed iteration 2's record written, before the older set is removed and
    # before last.* is copied.
    second = _meta_train(cut, config_file, "--resume", exit_after="progress.json")
    assert second.returncode == EXIT_AFTER_WRITING_STATUS, second.stderr
    assert json.loads((cut / "progress.json").read_text())["checkpoint"] == "resume-000002"
    assert (cut / "resume-000001.safetensors").is_file()
    last = _meta_train(cut, config_file, "--resume")
    assert last.returncode == 0, last.stderr
    assert f"iterations {ITERATIONS}/{ITERATIONS}" in last.stdout

    _assert_same(_run_state(cut), expected)
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "progress.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_a_run_of_the_earlier_layout_is_refused_by_name(tmp_path):
    """Runs written before checkpoint sets kept their state in ``last.*`` and ``last-outer.*``, with
    a record naming no set; resuming one says so instead of mixing files."""
    config = _config(iterations=1, validate_every=5)
    meta_train(tmp_path, config, seed=1)
    progress = json.loads((tmp_path / "progress.json").read_text())
    del progress["checkpoint"]
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(ValueError, match=r"progress\.json names no checkpoint set: the run was written by an earlier lto"):
        meta_train(tmp_path, config, seed=1, resume=True)
