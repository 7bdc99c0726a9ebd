"""`lto bench knowledge`: the synthetic facts, the GPT, recall and perplexity, EWC's Fisher for a
language model, and a --quick run of the command."""

from __future__ import annotations

import json
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lto_core.baselines import EWC
from lto_core.bench.knowledge import (
    BOS,
    EOS,
    PAD,
    RELATIONS,
    make_knowledge_stream,
    next_token_loss,
    perplexity,
    recall,
    sentence_log_likelihood,
)
from lto_core.models import GPT, GPT_SIZES, make_gpt
from lto_export.bench_cli import KNOWLEDGE_SIZES
from lto_export.cli import main


#: These models are tiny: one torch thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _words(stream, row):
    return [stream.vocab[i] for i in row if i != PAD]


def test_facts_are_rendered_by_every_template_and_new_entities_come_with_each_task():
    stream = make_knowledge_stream(tasks=3, entities=5, relations=2, seed=0)
    again = make_knowledge_stream(tasks=3, entities=5, relations=2, seed=0)
    assert again.vocab == stream.vocab and all(np.array_equal(a.x_train, b.x_train) for a, b in zip(again.tasks, stream.tasks))
    assert make_knowledge_stream(tasks=3, entities=5, relations=2, seed=1).vocab != stream.vocab
    entities = []
    for task in stream.tasks:
        assert len(task.recall) == 5 * 2
        assert len(task.x_train) == 5 * 2 * len(RELATIONS[0].templates)
        sentences = [_words(stream, row) for row in task.x_train]
        for row, mask in zip(task.recall, task.object_mask):
            words = _words(stream, row)
            assert words[0] == "<bos>" and words[-1] == "."
            assert words in sentences  # the recall prompt's form is one of the training sentences
            relation = next(r for r in RELATIONS if r.name == words[2])
            assert list(np.flatnonzero(mask)) == list(range(len(words) - 1 - relation.object_words, len(words) - 1))
            # every template of the fact is a training sentence ending in the same object
            rendered = [s for s in sentences if words[1] in s and s[-1 - relation.object_words : -1] == words[3:-1]]
            assert len(rendered) >= len(relation.templates)
        entities.append({_words(stream, row)[1] for row in task.recall})
    assert not (entities[0] & entities[1]) and not (entities[1] & entities[2])
    assert all(row[0] == BOS and EOS in row for task in stream.tasks for row in task.x_train)


def test_the_gpt_is_causal_and_the_sizes_reach_100m_parameters():
    model = GPT(vocab=20, context=8, dim=16, layers=1, heads=2)
    tokens = torch.randint(0, 20, (2, 8))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 20
    torch.testing.assert_close(model(tokens)[:, :5], model(changed)[:, :5])
    assert not torch.allclose(model(tokens)[:, 5:], model(changed)[:, 5:])
    with pytest.raises(ValueError, match="longer than the model's context of 8"):
        model(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="dim 10 is not divisible by heads 4"):
        GPT(vocab=20, context=8, dim=10, heads=4)
    with torch.device("meta"):
        large = GPT(vocab=300, context=12, **vars(GPT_SIZES["large"]))
    assert sum(p.numel() for p in large.parameters()) >= 100_000_000
    assert tuple(GPT_SIZES) == KNOWLEDGE_SIZES


def test_recall_and_perplexity_follow_what_the_model_learned():
    stream = make_knowledge_stream(tasks=2, entities=4, relations=2, seed=0)
    model = make_gpt("tiny", len(stream.vocab), stream.context, seed=0)
    learned, unseen = stream.tasks
    start = perplexity(model, learned)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    tokens = torch.from_numpy(learned.x_train)
    for _ in range(250):
        optimizer.zero_grad()
        next_token_loss(model, tokens).backward()
        optimizer.step()
    assert recall(model, learned) >= 0.9
    assert recall(model, unseen) <= 0.5
    assert perplexity(model, learned) < start / 4


def test_ewc_takes_a_language_model_fisher():
    stream = make_knowledge_stream(tasks=1, entities=3, relations=2, seed=0)
    model = make_gpt("tiny", len(stream.vocab), stream.context, seed=0)
    ewc = EWC(lam=100.0, fisher_samples=8, log_likelihood=sentence_log_likelihood)
    ewc.on_task_end(model, stream.tasks[0])
    fisher, _ = ewc.consolidated[0]
    assert all(bool(torch.isfinite(f).all()) for f in fisher) and sum(float(f.sum()) for f in fisher) > 0.0
    with torch.no_grad():
        model.token.weight.add_(0.01)
    assert ewc.penalty(model).item() > 0.0


def test_bench_knowledge_quick_writes_json_table_and_plots(tmp_path):
    result = CliRunner().invoke(main, ["bench", "knowledge", "--quick", "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| `si` |" in result.output and "final recall (ACC)" in result.output
    payload = json.loads((tmp_path / "results.json").read_text())
    assert set(payload["summary"]) == {"adam", "adamw", "ewc", "si", "lto"}
    assert payload["config"]["size"] == "tiny" and payload["config"]["optimizers"]["adamw"]["weight_decay"] == 0.01
    for record in payload["records"]:
        assert np.asarray(record["R"]).shape == (2, 2) and np.asarray(record["P"]).shape == (2, 2)
        assert record["ms_per_iteration"] > 0 and record["perplexity"] > 1
        assert len(record["losses"]) == 2 * 30
    b = {r["optimizer"]: r["b"] for r in payload["records"]}
    assert all(v == b["adam"] for v in b.values())  # same initial weights
    first_task_losses = {r["optimizer"]: r["losses"][:30] for r in payload["records"] if r["optimizer"] in ("adam", "lto", "si")}
    # before the first boundary LTO is exactly Adam and SI's penalty is zero: same batches, same losses
    assert first_task_losses["lto"] == pytest.approx(first_task_losses["adam"], abs=1e-4)
    assert first_task_losses["si"] == pytest.approx(first_task_losses["adam"], abs=1e-4)
    for name in ("heatmaps.png", "knowledge.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_knowledge_rejects_bad_input_with_the_fix(tmp_path):
    result = CliRunner().invoke(main, ["bench", "knowledge", "--optimizers", "adam,sgd", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "sgd" in result.output and "adamw" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(main, ["bench", "knowledge", "--device", "cuda", "--out", str(tmp_path)])
        assert result.exit_code == 2 and "torch sees no CUDA GPU here; use --device cpu" in result.output
    result = CliRunner().invoke(main, ["bench", "knowledge", "--device", "tpu0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--device" in result.output
    result = CliRunner().invoke(main, ["bench", "knowledge", "--size", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "large" in result.output
