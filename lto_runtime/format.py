"""The optimizer-file format: input and output names, state slots, scalars, metadata keys.

These names are the contract between the step graph (built in ``lto_core``), the exported ONNX
file and the runtime that feeds it. A file whose ``lto.format`` is not :data:`FORMAT` is refused.
"""

from __future__ import annotations

from lto_runtime.layout import CTX_NAMES

#: Version of the optimizer-file format this runtime reads (2: per-token coefficients, one input
#: per state slot, consolidation and the network only on the windows that need them).
FORMAT = 2
#: Optimizer state slots per element, in order: Adam's moments, the consolidated importance
#: stored as ``log(1 + Omega)``, and the anchor (parameters at the last task boundary).
STATE_NAMES: tuple[str, ...] = ("exp_avg", "exp_avg_sq", "log_importance", "anchor")
#: Per-token state, in order: the coefficients the network chose at its last refresh (see
#: :func:`lto_core.step.protected_update`).
TOKEN_STATE_NAMES: tuple[str, ...] = ("gate_offset", "gate_slope", "pull")
#: Graph inputs, in order. ``grad``, ``param``, ``mask`` and every state slot are ``[B, W, C]``,
#: ``coefficients`` is ``[B, W, len(TOKEN_STATE_NAMES)]``, ``scalars`` ``[B, len(SCALAR_NAMES)]``,
#: ``ctx`` ``[B, len(CTX_NAMES)]``; ``B`` is the dynamic window count. ``boundary_windows``
#: ``[Nb]`` and ``refresh_windows`` ``[Nr]`` list (as float32, ascending) the windows of this call
#: that consolidate a task boundary and whose network runs; either may be empty.
INPUT_NAMES: tuple[str, ...] = (
    "grad", "param", "mask", *STATE_NAMES, "coefficients", "scalars", "ctx", "boundary_windows", "refresh_windows"
)
#: Graph outputs, in order: the update and Adam's new moments ``[B, W, C]``; the consolidated
#: importance and anchor of the ``boundary_windows`` ``[Nb, W, C]``; the network's new coefficients
#: for the ``refresh_windows`` ``[Nr, W, len(TOKEN_STATE_NAMES)]``. A runtime first calls the graph
#: with the windows to consolidate listed, then with those to refresh, writing the results into its
#: state each time, and then once with no window listed for the update and moments it keeps, so
#: the step already uses what was consolidated and chosen on it (every other input state is
#: unchanged by the step).
OUTPUT_NAMES: tuple[str, ...] = (
    "update", "new_exp_avg", "new_exp_avg_sq", "consolidated_log_importance", "consolidated_anchor", "refreshed_coefficients"
)
#: Per-window scalars, in order: hyper-parameters, then counters and flags.
SCALAR_NAMES: tuple[str, ...] = (
    "lr",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "step",
    "steps_since_boundary",
    "boundaries",
    "active",
)
#: The hyper-parameters an adapter passes per tensor (the first scalars).
HYPER_NAMES: tuple[str, ...] = SCALAR_NAMES[:5]
#: ``metadata_props`` every optimizer file carries.
METADATA_KEYS: tuple[str, ...] = (
    "lto.format",
    "lto.chunk",
    "lto.window",
    "lto.refresh_every",
    "lto.state",
    "lto.token_state",
    "lto.scalars",
    "lto.ctx",
    "lto.version",
    "lto.checkpoint_sha256",
    "lto.meta_train",
)

__all__ = [
    "CTX_NAMES",
    "FORMAT",
    "HYPER_NAMES",
    "INPUT_NAMES",
    "METADATA_KEYS",
    "OUTPUT_NAMES",
    "SCALAR_NAMES",
    "STATE_NAMES",
    "TOKEN_STATE_NAMES",
]
