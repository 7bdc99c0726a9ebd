"""Check lto on a CUDA GPU: which onnxruntime provider really runs, that the onnx and torch
backends agree there, that a step on torch CUDA tensors makes no host copy of gradients,
parameters or state, the step time against ``torch.optim.Adam(fused=True)``, and one
``lto bench knowledge`` run on the GPU.

    pip uninstall -y onnxruntime && pip install onnxruntime-gpu
    python scripts/gpu_check.py                  # every check; exit status 0 when all pass
    python scripts/gpu_check.py --allow-no-gpu   # where there may be no GPU: say so, exit 0

Exit status: 0 every check passed; 1 a check failed; 2 no usable CUDA GPU here (0 with
``--allow-no-gpu``). The report is printed and written to ``OUT/report.json``; the knowledge
run's files go to ``OUT/knowledge``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import click
import torch

from lto_core.bench.speed import make_parameters, speed_shapes

#: ``lto validate``'s tolerance: the backends' parameters may differ by at most this after the steps.
PARITY_TOLERANCE = 1e-5
#: A step's host traffic (both directions) may be at most this fraction of the parameters' bytes:
#: the step counters go up and a finite flag per tensor comes down, while a copy of the gradients
#: alone would be the whole of them.
HOST_TRAFFIC_LIMIT = 0.02
#: The CUDA providers asked for, in order (onnxruntime falls back to the next when one fails).
CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def no_gpu_reason() -> str | None:
    """``None`` when torch sees a CUDA GPU and onnxruntime has its CUDA provider; else what is
    missing and how to get it."""
    import onnxruntime as ort

    if not torch.cuda.is_available():
        built = torch.version.cuda or "none: this is torch's CPU build"
        return (
            f"no CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False; CUDA build: {built}). "
            "Run this on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it is the CPU build): "
            "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
        )
    return None


def providers_for(device: str) -> list[str] | None:
    """The onnxruntime providers LTO asks for on ``device``: CUDA first on a GPU, the default (CPU) otherwise."""
    return CUDA_PROVIDERS if torch.device(device).type == "cuda" else None


def device_parameters(size: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """:func:`lto_core.bench.speed.make_parameters` of ``size`` elements (four tensors), as leaf
    tensors with their gradients on ``device``."""
    params = []
    for p in make_parameters(speed_shapes(size), seed):
        leaf = p.detach().to(device).requires_grad_()
        leaf.grad = p.grad.to(device)
        params.append(leaf)
    return params


def session_providers(device: str) -> list[str]:
    """``session.get_providers()`` of the onnxruntime session an ``LTO`` on ``device`` tensors
    runs: the providers it really loaded, in order."""
    from lto_adapters.torch import LTO

    optimizer = LTO(device_parameters(4096, device), providers=providers_for(device))
    return optimizer.runtime.session.get_providers()


def backend_parity(device: str, steps: int = 24, size: int = 20_000, seed: int = 0) -> float:
    """Largest ``|theta_onnx - theta_torch|`` after ``steps`` steps of ``LTO(backend="onnx")`` and
    ``LTO(backend="torch")`` on the same ``device`` tensors and the same random gradients, with a
    task boundary half-way (so the consolidation and the network's coefficients run too)."""
    from lto_adapters.torch import LTO

    onnx_params = device_parameters(size, device, seed)
    torch_params = device_parameters(size, device, seed)
    optimizers = [LTO(onnx_params, providers=providers_for(device)), LTO(torch_params, backend="torch")]
    generator = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        for a, b in zip(onnx_params, torch_params):
            grad = torch.randn(a.shape, generator=generator).to(device)
            a.grad, b.grad = grad.clone(), grad.clone()
        for optimizer in optimizers:
            optimizer.step()
            if step == steps // 2:
                optimizer.task_boundary()
    return max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(onnx_params, torch_params))


def median_step_ms(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], size: int, device: str, repeats: int) -> float:
    """Median milliseconds of ``optimizer.step()`` over ``repeats`` steps on ``size`` parameters on
    ``device``, after one untimed step; on a GPU each step is timed to its end (``synchronize``)."""
    gpu = torch.device(device).type == "cuda"
    optimizer = make(device_parameters(size, device))
    optimizer.step()
    times = []
    for _ in range(repeats):
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.step()
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    del optimizer
    if gpu:
        torch.cuda.empty_cache()
    return 1000.0 * statistics.median(times)


def step_times(size: int, device: str, repeats: int) -> dict[str, float]:
    """Median step milliseconds of LTO (onnx backend) and ``torch.optim.Adam(fused=True)`` at ``size``
    parameters on ``device``, and their ratio."""
    from lto_adapters.torch import LTO

    lto_ms = median_step_ms(lambda p: LTO(p, providers=providers_for(device)), size, device, repeats)
    adam_ms = median_step_ms(lambda p: torch.optim.Adam(p, fused=True), size, device, repeats)
    return {"lto_ms": lto_ms, "adam_fused_ms": adam_ms, "ratio": lto_ms / adam_ms}


def host_copies(size: int, device: str, steps: int = 3) -> dict[str, Any]:
    """Copies between host and GPU during ``steps`` LTO steps on ``size`` parameters of CUDA
    tensors, as the CUDA profiler (CUPTI, through ``torch.profiler``) records them: it sees every
    copy in the process, onnxruntime's included. Returns per direction (``HtoD``, ``DtoH``,
    ``DtoD``) the count and bytes per step, the largest host copy, and the parameters' bytes.

    Raises:
        ValueError: ``device`` is not a CUDA device (there are no host copies to count on the CPU).
    """
    from torch.profiler import ProfilerActivity, profile

    from lto_adapters.torch import LTO

    if torch.device(device).type != "cuda":
        raise ValueError(f"host copies are counted on a CUDA device, not {device!r}; pass a cuda device")
    params = device_parameters(size, device)
    optimizer = LTO(params, providers=CUDA_PROVIDERS)
    optimizer.step()  # lazy state, first-run allocations
    torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            for _ in range(steps):
                optimizer.step()
            torch.cuda.synchronize()
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    copies = {kind: {"count": 0, "bytes": 0} for kind in ("HtoD", "DtoH", "DtoD")}
    largest_host_copy = 0
    for event in events:
        name = str(event.get("name", ""))
        if not name.startswith("Memcpy"):
            continue
        kind = next((k for k in copies if k in name), None)
        if kind is None:
            continue
        size_bytes = int(event.get("args", {}).get("bytes", 0))
        copies[kind]["count"] += 1
        copies[kind]["bytes"] += size_bytes
        if kind != "DtoD":
            largest_host_copy = max(largest_host_copy, size_bytes)
    per_step = {k: {"count": v["count"] / steps, "bytes": v["bytes"] / steps} for k, v in copies.items()}
    return {
        "per_step": per_step,
        "largest_host_copy_bytes": largest_host_copy,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in params),
        "smallest_tensor_bytes": min(p.numel() * p.element_size() for p in params),
    }


def host_copies_pass(copies: dict[str, Any]) -> bool:
    """No host copy as large as the smallest parameter tensor, and host traffic per step at most
    :data:`HOST_TRAFFIC_LIMIT` of the parameters' bytes."""
    traffic = copies["per_step"]["HtoD"]["bytes"] + copies["per_step"]["DtoH"]["bytes"]
    return copies["largest_host_copy_bytes"] < copies["smallest_tensor_bytes"] and traffic <= HOST_TRAFFIC_LIMIT * copies["parameter_bytes"]


def knowledge_run(size: str, device: str, out: Path) -> int:
    """``lto bench knowledge --size SIZE --device DEVICE --seeds 1 --out OUT`` in a child process; its exit status."""
    command = [sys.executable, "-c", "from lto_export.cli import main; main()", "bench", "knowledge"]
    command += ["--size", size, "--device", device, "--seeds", "1", "--out", str(out)]
    click.echo("$ lto " + " ".join(command[3:]))
    return subprocess.run(command, check=False).returncode


def _parse_sizes(value: str) -> list[int]:
    try:
        sizes = [int(float(s)) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers such as 1e7,1e8") from None
    if not sizes or min(sizes) < 4:
        raise click.BadParameter(f"{value!r}: every size must be at least 4 parameters")
    return sizes


@click.command()
@click.option("--device", default="cuda", show_default=True, help="The CUDA device to check (cuda or cuda:N).")
@click.option("--sizes", default="1e7,1e8", show_default=True, callback=lambda ctx, param, value: _parse_sizes(value), help="Parameter counts for the step times.")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps per optimizer and size.")
@click.option("--knowledge-size", type=click.Choice(["tiny", "small", "medium", "large"]), default="large", show_default=True, help="GPT size of the `lto bench knowledge` run.")
@click.option("--skip-knowledge", is_flag=True, help="Leave out the `lto bench knowledge` run.")
@click.option("--allow-no-gpu", is_flag=True, help="Without a usable GPU, say so and exit 0 instead of 2.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/gpu-check", show_default=True, help="Folder for report.json and the knowledge run.")
def main(device: str, sizes: list[int], repeats: int, knowledge_size: str, skip_knowledge: bool, allow_no_gpu: bool, out: str) -> None:
    """Run every GPU check and print a PASS/FAIL line for each."""
    if not device.startswith("cuda"):
        raise click.BadParameter(f"{device!r} is not a CUDA device; this script checks the GPU path (cuda or cuda:N)", param_hint="--device")
    reason = no_gpu_reason()
    if reason is not None:
        click.echo(f"GPU check not run: {reason}")
        sys.exit(0 if allow_no_gpu else 2)
    import onnxruntime as ort

    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(torch.device(device)),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "platform": platform.platform(),
    }
    click.echo(f"{report['date']}: {report['device']}, torch {report['torch']} (CUDA {report['cuda']}), onnxruntime {report['onnxruntime']}")
    passed: dict[str, bool] = {}

    providers = session_providers(device)
    report["session_providers"] = providers
    passed["provider"] = providers[0] == "CUDAExecutionProvider"
    click.echo(f"{'PASS' if passed['provider'] else 'FAIL'} provider: session.get_providers() = {providers}")

    difference = backend_parity(device)
    report["parity_max_abs_difference"] = difference
    passed["parity"] = difference <= PARITY_TOLERANCE
    click.echo(f"{'PASS' if passed['parity'] else 'FAIL'} parity: max |onnx - torch| = {difference:.2e} (tolerance {PARITY_TOLERANCE:.0e})")

    copies = host_copies(min(sizes), device)
    report["host_copies"] = copies
    passed["host_copies"] = host_copies_pass(copies)
    per_step = copies["per_step"]
    click.echo(
        f"{'PASS' if passed['host_copies'] else 'FAIL'} host copies per step at {min(sizes):.0e} parameters: "
        f"HtoD {per_step['HtoD']['count']:.0f} ({per_step['HtoD']['bytes']:.0f} B), DtoH {per_step['DtoH']['count']:.0f} "
        f"({per_step['DtoH']['bytes']:.0f} B), largest {copies['largest_host_copy_bytes']} B; parameters {copies['parameter_bytes']} B"
    )

    report["step_times"] = {}
    for size in sizes:
        times = step_times(size, device, repeats)
        report["step_times"][str(size)] = times
        click.echo(f"step time at {size:.0e}: LTO {times['lto_ms']:.2f} ms, Adam(fused=True) {times['adam_fused_ms']:.2f} ms, ratio {times['ratio']:.2f}")

    if not skip_knowledge:
        status = knowledge_run(knowledge_size, device, out_path / "knowledge")
        passed["knowledge"] = status == 0
        report["knowledge"] = {"size": knowledge_size, "exit_status": status, "folder": str(out_path / "knowledge")}
        click.echo(f"{'PASS' if passed['knowledge'] else 'FAIL'} lto bench knowledge --size {knowledge_size}: exit status {status}")

    report["passed"] = passed
    (out_path / "report.json").write_text(json.dumps(report, indent=1))
    click.echo(f"wrote {out_path / 'report.json'}")
    sys.exit(0 if all(passed.values()) else 1)


if __name__ == "__main__":
    main()
