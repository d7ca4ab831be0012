"""edgekit finetune on a tiny BERT built in code: a real HF directory, labels, determinism."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import needs

pytestmark = needs("torch", "transformers", "accelerate")


def _finetune(tiny_base, splits, out, seed=0, extra=()):
    from edgekit.cli import cli

    result = CliRunner().invoke(
        cli,
        ["finetune", "--train", str(splits["train"]), "--validation", str(splits["validation"]), "--out", str(out),
         "--base", str(tiny_base), "--epochs", "10", "--batch-size", "16", "--lr", "5e-3", "--seed", str(seed), "--no-progress",
         *extra],
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_finetune_writes_a_standard_model_dir(tmp_path, tiny_base, small_splits):
    from transformers import AutoModel, AutoTokenizer

    from edgekit.converters.evaluate import evaluate_model_dir
    from edgekit.data import load_dataset

    out = tmp_path / "cloud"
    output = _finetune(tiny_base, small_splits, out, extra=["--test", str(small_splits["test"])])
    assert "validation accuracy" in output
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(set(load_dataset(small_splits["train"]).labels))
    AutoTokenizer.from_pretrained(out)
    AutoModel.from_pretrained(out)  # the encoder is a standard HF directory; the head sits beside it
    assert config["edgekit_pooling"] == "mean"  # the tiny base is laid out as a sentence-transformers encoder
    assert (out / "edgekit_head.safetensors").is_file()
    record = json.loads((out / "edgekit_training.json").read_text())
    metrics = evaluate_model_dir(out, load_dataset(small_splits["test"]))
    # 6 balanced intents: chance is ~0.17; a trained tiny model clears it by far
    assert metrics["accuracy"] > 0.5, metrics
    # --test: scored once with the kept weights, the same figure an evaluation of the written model gives
    assert f"test accuracy {metrics['accuracy']:.4f}" in output
    assert record["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert record["validation_accuracy"] > 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_finetune_is_deterministic_under_seed(tmp_path, tiny_base, small_splits):
    from safetensors.numpy import load_file

    _finetune(tiny_base, small_splits, tmp_path / "a", seed=3)
    _finetune(tiny_base, small_splits, tmp_path / "b", seed=3)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    head_a = load_file(tmp_path / "a" / "edgekit_head.safetensors")
    head_b = load_file(tmp_path / "b" / "edgekit_head.safetensors")
    assert all((head_a[k] == head_b[k]).all() for k in head_a)


@pytest.mark.slow
def test_bitext_default_base_reaches_095(tmp_path):
    """The README's figure: the default base on the shared bitext data (minutes on 2 cores)."""
    from tests.conftest import SHARED_DATA

    bitext = SHARED_DATA / "bitext"
    if not bitext.is_dir():
        pytest.skip("../shared/data/bitext is absent")
    from edgekit.converters.training.finetune import FinetuneConfig, finetune

    result = finetune(FinetuneConfig(train=bitext / "train.jsonl", validation=bitext / "validation.jsonl",
                                     out=tmp_path / "m", progress=False))
    assert result.validation_accuracy >= 0.95
