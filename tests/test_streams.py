"""Stream kinds on real data: what each task changes, and that a seed alone decides it."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lto_core.data import load_dataset
from lto_core.streams import AFFINE_GAIN, PARTIAL_SHARE, STREAMS, make_stream
from lto_export.cli import main


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def test_permuted_tasks_are_the_permutations_the_seed_draws(digits):
    """The kinds added later draw nothing for ``permuted``: its tasks are the seed's permutations in order."""
    stream = make_stream(digits, "permuted", "domain", 3, seed=5)
    rng = np.random.default_rng(5)
    for task in stream.tasks[1:]:
        perm = rng.permutation(64)
        np.testing.assert_array_equal(_flat(task.x_train), _flat(digits.x_train)[:, perm])


def test_partial_tasks_move_a_share_of_features_among_themselves(digits):
    stream = make_stream(digits, "partial", "domain", 4, seed=1)
    x0 = _flat(digits.x_train)
    # Features that are constant in the data cannot show where they went; the others are distinct columns.
    informative = x0.std(axis=0) > 0
    shares, subsets = [], set()
    for task in stream.tasks[1:]:
        x = _flat(task.x_train)
        np.testing.assert_array_equal(np.sort(x, axis=1), np.sort(x0, axis=1))  # same values per example
        changed = ~np.all(x == x0, axis=0)
        shares.append((changed & informative).sum() / 64)
        subsets.add(tuple(np.flatnonzero(changed)))
        np.testing.assert_array_equal(task.y_train, digits.y_train)
    assert all(0 < s <= PARTIAL_SHARE[1] + 1 / 64 for s in shares)
    assert len(subsets) == 3  # each task its own subset
    np.testing.assert_array_equal(stream.tasks[0].x_train, digits.x_train)


def test_partial_share_differs_between_streams_and_sits_in_its_range(digits):
    moved = []
    for seed in range(6):
        task = make_stream(digits, "partial", "domain", 2, seed=seed).tasks[1]
        moved.append(np.mean(~np.all(_flat(task.x_train) == _flat(digits.x_train), axis=0)))
    assert max(moved) - min(moved) > 0.05  # the share is drawn per stream
    assert max(moved) <= PARTIAL_SHARE[1] + 1 / 64


def test_affine_tasks_rescale_and_shift_each_feature_in_place(digits):
    stream = make_stream(digits, "affine", "class", 3, seed=2)
    x0 = _flat(digits.x_train).astype(np.float64)
    varying = x0.std(axis=0) > 0
    for task in stream.tasks[1:]:
        x = _flat(task.x_train).astype(np.float64)
        assert task.x_train.dtype == digits.x_train.dtype and task.x_train.shape == digits.x_train.shape
        gain = x[:, varying].std(axis=0) / x0[:, varying].std(axis=0)
        assert np.all(gain > AFFINE_GAIN[0] * 0.999) and np.all(gain < AFFINE_GAIN[1] * 1.001)
        # Each feature stays where it was: a feature is an exact affine map of the same feature.
        corr = [np.corrcoef(x[:, j], x0[:, j])[0, 1] for j in np.flatnonzero(varying)]
        assert min(corr) > 0.999
        np.testing.assert_array_equal(task.y_train, digits.y_train)
        np.testing.assert_array_equal(task.x_test.shape, digits.x_test.shape)


@pytest.mark.parametrize("kind", ["partial", "affine"])
def test_new_kinds_are_decided_by_the_seed_alone(digits, kind):
    a = make_stream(digits, kind, "task", 3, seed=9)
    b = make_stream(digits, kind, "task", 3, seed=9)
    c = make_stream(digits, kind, "task", 3, seed=10)
    for ta, tb in zip(a.tasks, b.tasks):
        np.testing.assert_array_equal(ta.x_train, tb.x_train)
    assert not np.array_equal(a.tasks[2].x_train, c.tasks[2].x_train)
    assert a.num_outputs == 3 * digits.num_classes and a.tasks[1].classes == tuple(range(10, 20))


def test_bench_cl_offers_every_stream_kind():
    """The CLI writes its choices out (it must not import torch to start): they are STREAMS."""
    option = next(p for p in main.commands["bench"].commands["cl"].params if p.name == "stream")
    assert tuple(option.type.choices) == STREAMS


def test_an_unknown_stream_kind_names_the_choices(digits):
    with pytest.raises(ValueError, match="unknown stream 'shifted'.*affine"):
        make_stream(digits, "shifted", "domain", 2)
    result = CliRunner().invoke(main, ["bench", "cl", "--stream", "shifted"])
    assert result.exit_code != 0 and "partial" in result.output
