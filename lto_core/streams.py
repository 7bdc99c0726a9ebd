"""Continual-learning streams: a dataset cut or transformed into a sequence of tasks.

* ``split``: each task holds a disjoint subset of the classes.
* ``permuted``: each task applies its own fixed permutation to the input features.
* ``rotated``: each task rotates images by its own angle (vectors: a circular shift).
* ``remapped``: each task relabels the classes with its own permutation.
* ``partial``: each task permutes its own random subset of the input features among themselves;
  the subset's share, drawn once per stream from :data:`PARTIAL_SHARE`, sets how much the tasks
  conflict (between ``permuted``, all of them, and none).
* ``affine``: each task rescales and shifts every input feature by its own gain (log-uniform in
  :data:`AFFINE_GAIN`) and offset (normal, std :data:`AFFINE_OFFSET`): the features stay where
  they are, so later tasks can reuse what earlier ones learned.

Scenarios (van de Ven & Tolias, 2019) fix what the model is told and predicts:
``task``-incremental (the task's classes are known: logits outside them are masked),
``domain``-incremental (one shared head over the within-task labels), ``class``-incremental
(one head over all classes, no task identity).

A stream may also be *gradual*: each task blends into the next over its first steps, with the
share of the previous task's examples given by :func:`previous_task_probability`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lto_core.data import Dataset

#: Stream kinds :func:`make_stream` builds.
STREAMS = ("split", "permuted", "rotated", "remapped", "partial", "affine")
#: Scenarios: what the model is told (task identity or not) and which outputs it predicts.
SCENARIOS = ("task", "domain", "class")
#: Range of the share of features a ``partial`` stream's tasks permute, drawn once per stream.
PARTIAL_SHARE = (0.1, 0.5)
#: Range of an ``affine`` task's per-feature gain, drawn log-uniformly.
AFFINE_GAIN = (0.5, 2.0)
#: Standard deviation of an ``affine`` task's per-feature offset (features are standardized).
AFFINE_OFFSET = 0.5


@dataclass(frozen=True)
class Task:
    """One task of a stream; labels are already in the scenario's output space."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    #: Output units this task may use (task-incremental masking); ``None``: all of them.
    classes: tuple[int, ...] | None


@dataclass(frozen=True)
class Stream:
    """Tasks in order, with the number of output units the model needs."""

    name: str
    scenario: str
    tasks: tuple[Task, ...]
    num_outputs: int
    input_shape: tuple[int, ...]


def _rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate images ``[N, H, W]`` about their center (nearest neighbour); shift vectors circularly."""
    if x.ndim == 2:
        return np.roll(x, int(round(degrees / 360.0 * x.shape[1])), axis=1)
    _, h, w = x.shape
    theta = np.deg2rad(degrees)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    src_y = np.cos(theta) * (yy - cy) + np.sin(theta) * (xx - cx) + cy
    src_x = -np.sin(theta) * (yy - cy) + np.cos(theta) * (xx - cx) + cx
    sy, sx = np.rint(src_y).astype(int), np.rint(src_x).astype(int)
    inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    out = np.full_like(x, x.min())
    out[:, inside] = x[:, sy[inside], sx[inside]]
    return out


def _permute_features(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``x`` with its flattened features reordered by ``perm``, in its own shape."""
    return x.reshape(len(x), -1)[:, perm].reshape(x.shape)


def _partial_permutation(rng: np.random.Generator, features: int, share: float) -> np.ndarray:
    """A permutation of ``features`` that moves only a random ``share`` of them (at least two)
    among themselves and leaves the rest in place."""
    moved = rng.choice(features, size=max(2, round(share * features)), replace=False)
    perm = np.arange(features)
    perm[moved] = moved[rng.permutation(len(moved))]
    return perm


def _affine_features(x: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``x * gain + offset`` per flattened feature, in ``x``'s shape and dtype."""
    flat = x.reshape(len(x), -1) * gain + offset
    return flat.reshape(x.shape).astype(x.dtype)


def make_stream(data: Dataset, stream: str, scenario: str, tasks: int, seed: int = 0) -> Stream:
    """Build a stream of ``tasks`` tasks from ``data``.

    Raises:
        ValueError: unknown ``stream``/``scenario``, or a split with fewer classes than tasks.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; choose one of {STREAMS}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {SCENARIOS}")
    rng = np.random.default_rng(seed)
    k = data.num_classes
    if stream == "split":
        if tasks > k:
            raise ValueError(f"a split stream of {tasks} tasks needs at least {tasks} classes; {data.name} has {k}")
        groups = np.array_split(rng.permutation(k), tasks)
        built = []
        for t, group in enumerate(groups):
            tr, te = np.isin(data.y_train, group), np.isin(data.y_test, group)
            built.append(_label_task(data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te], group, scenario))
        width = max(len(g) for g in groups)
        outputs = k if scenario in ("task", "class") else width
        return Stream(f"split-{data.name}", scenario, tuple(built), outputs, data.input_shape)
    features = int(np.prod(data.input_shape))
    # Drawn only for its own kind, so every other kind draws the tasks it drew before it existed.
    share = float(rng.uniform(*PARTIAL_SHARE)) if stream == "partial" else 0.0
    built = []
    for t in range(tasks):
        x_train, x_test, y_train, y_test = data.x_train, data.x_test, data.y_train, data.y_test
        if stream == "permuted" and t > 0:
            perm = rng.permutation(features)
            x_train, x_test = _permute_features(x_train, perm), _permute_features(x_test, perm)
        elif stream == "partial" and t > 0:
            perm = _partial_permutation(rng, features, share)
            x_train, x_test = _permute_features(x_train, perm), _permute_features(x_test, perm)
        elif stream == "affine" and t > 0:
            gain = np.exp(rng.uniform(np.log(AFFINE_GAIN[0]), np.log(AFFINE_GAIN[1]), size=features))
            offset = rng.normal(0.0, AFFINE_OFFSET, size=features)
            x_train, x_test = _affine_features(x_train, gain, offset), _affine_features(x_test, gain, offset)
        elif stream == "rotated" and t > 0:
            angle = float(rng.uniform(0.0, 180.0)) if tasks > 2 else 90.0
            x_train, x_test = _rotate(x_train, angle), _rotate(x_test, angle)
        elif stream == "remapped" and t > 0:
            relabel = rng.permutation(k)
            y_train, y_test = relabel[y_train], relabel[y_test]
        if scenario == "task":
            offset = t * k
            built.append(Task(x_train, y_train + offset, x_test, y_test + offset, tuple(range(offset, offset + k))))
        else:
            built.append(Task(x_train, y_train, x_test, y_test, None))
    outputs = k * tasks if scenario == "task" else k
    return Stream(f"{stream}-{data.name}", scenario, tuple(built), outputs, data.input_shape)


def previous_task_probability(step: int, blend: int) -> float:
    """The probability that a training example at ``step`` of a task (counted from 0) comes from
    the previous task, in a gradual stream whose tasks blend into each other over ``blend`` steps.

    A linear blend: ``1 - step / blend`` during the first ``blend`` steps of a task, 0 after them
    (``blend = 0``: tasks switch at once). At the first step of a task every example is still the
    previous task's; from step ``blend`` on none is. Meant for every task after the first (the
    first has no previous task).

    Raises:
        ValueError: ``step`` or ``blend`` is negative.

    Examples:
        >>> [previous_task_probability(j, 4) for j in range(6)]
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    if step < 0 or blend < 0:
        raise ValueError(f"step and blend must be >= 0, got step={step}, blend={blend}")
    return 1.0 - step / blend if step < blend else 0.0


def _label_task(x_tr, y_tr, x_te, y_te, group: np.ndarray, scenario: str) -> Task:
    """Labels of a split task in the scenario's output space."""
    if scenario == "domain":
        index = {int(c): i for i, c in enumerate(group)}
        return Task(x_tr, np.array([index[int(c)] for c in y_tr]), x_te, np.array([index[int(c)] for c in y_te]), None)
    classes = tuple(int(c) for c in sorted(group)) if scenario == "task" else None
    return Task(x_tr, y_tr, x_te, y_te, classes)
