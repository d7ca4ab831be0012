"""``edgekit finetune``: a pretrained encoder → a fine-tuned sequence classifier (the "cloud model").

This stands in for the cloud training job real users already have: it writes a standard
Hugging Face model directory (labels in ``config.json``, tokenizer files) that
``edgekit convert`` and ``edgekit serve-cloud`` take as input.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.data import label_ids, load_splits
from edgekit.errors import ModelError

__all__ = ["TRAINING_RECORD", "FinetuneConfig", "FinetuneResult", "finetune", "warm_start_head"]

log = logging.getLogger(__name__)

TRAINING_RECORD = "edgekit_training.json"


@dataclass(frozen=True)
class FinetuneConfig:
    train: Path
    validation: Path
    out: Path
    test: Path | None = None  # scored once at the end (the best epoch), for the record; never for choosing
    base: str | Path | None = None  # packaged model name or local HF directory; None = default
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None  # None: 5x learning_rate (the head starts from a probe)
    pooling: str | None = None  # None: the pooling the base was trained with (mean for sentence-transformers)
    probe_init: bool = True  # start the head from a linear probe on the frozen base
    max_length: int = 64
    seed: int = 0
    patience: int = 3  # epochs without a better validation score before stopping (the best is kept)
    mixed_precision: str = "auto"  # "no" | "bf16" | "auto" (bf16 where the hardware multiplies it)
    text_field: str = "text"
    label_field: str = "label"
    progress: bool = True


@dataclass(frozen=True)
class FinetuneResult:
    model_dir: Path
    validation_accuracy: float
    labels: list[str]
    best_epoch: int
    probe_accuracy: float | None = None  # the frozen base + linear probe, on validation
    test_accuracy: float | None = None  # with FinetuneConfig.test


def _load_base(base_dir: Path, labels: list[str], pooling: str | None):
    from transformers import AutoTokenizer

    from edgekit.converters.classifier import PooledClassifier, base_pooling, load_encoder

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir, use_fast=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load a tokenizer from {base_dir}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{base_dir}: edgekit needs a fast tokenizer (tokenizer.json)")
    model = PooledClassifier(load_encoder(base_dir), labels, pooling or base_pooling(base_dir))
    return model, tokenizer


def warm_start_head(model, tokenizer, train_texts, y_train, val_texts, y_val, *, max_length: int) -> float:
    """Fit a linear probe on the frozen encoder and load it into the head; returns its validation accuracy."""
    from edgekit.converters.training.probe import fit_probe, pooled_features

    x_train = pooled_features(model, tokenizer, train_texts, max_length=max_length)
    probe = fit_probe(x_train, np.asarray(y_train), model.config.num_labels, scale=0.5)
    model.classifier = probe.to_linear()
    x_val = pooled_features(model, tokenizer, val_texts, max_length=max_length)
    return probe.accuracy(x_val, np.asarray(y_val))


def finetune(config: FinetuneConfig) -> FinetuneResult:
    from edgekit.converters.training.pretrained import resolve_base
    from edgekit.converters.training.loop import (
        resolve_mixed_precision,
        seed_everything,
        token_lengths,
        train,
        warm_start_train_config,
    )

    train_ds, val_ds, test_ds = load_splits(
        config.train, config.validation, config.test, text_field=config.text_field, label_field=config.label_field
    )
    labels = train_ds.label_set
    base_dir = resolve_base(config.base)
    seed_everything(config.seed)
    model, tokenizer = _load_base(base_dir, labels, config.pooling)
    y_train = label_ids(train_ds.labels, labels, where=str(config.train)).tolist()
    y_val = label_ids(val_ds.labels, labels, where=str(config.validation))
    probe_accuracy = None
    if config.probe_init:
        probe_accuracy = warm_start_head(model, tokenizer, train_ds.texts, y_train, val_ds.texts, y_val,
                                         max_length=config.max_length)
        log.info("linear probe on the frozen base: validation accuracy %.4f", probe_accuracy)
    collate, loss_fn, evaluate = _steps(tokenizer, config.max_length, val_ds.texts, y_val)
    result = train(
        model,
        list(zip(train_ds.texts, y_train)),
        collate,
        loss_fn,
        evaluate,
        warm_start_train_config(config, epochs=config.epochs,
                                mixed_precision=resolve_mixed_precision(config.mixed_precision)),
        lengths=token_lengths(tokenizer, train_ds.texts, config.max_length),
        description="finetune",
    )
    test_accuracy = None
    if test_ds is not None:
        y_test = label_ids(test_ds.labels, labels, where=str(config.test))
        test_accuracy = _accuracy(model, tokenizer, test_ds.texts, y_test, config.max_length)
    record = _record(config, base_dir, model.pooling, labels, probe_accuracy, result, train_ds, val_ds)
    record["test_accuracy"] = test_accuracy
    out = Path(config.out)
    _write_model_dir(model, tokenizer, record, out)
    return FinetuneResult(out, result.best_score, labels, result.best_epoch, probe_accuracy, test_accuracy)


def _steps(tokenizer, max_length: int, val_texts, y_val):
    """The batch builder, the loss (cross-entropy on the labels) and the validation accuracy."""
    import torch

    from edgekit.converters.training.loop import encode

    def collate(items: list[tuple[str, int]]) -> dict:
        batch = encode(tokenizer, [t for t, _ in items], max_length)
        batch["labels"] = torch.tensor([y for _, y in items])
        return batch

    def loss_fn(m, batch: dict):
        return m(**batch).loss

    def evaluate(m) -> float:
        return _accuracy(m, tokenizer, val_texts, y_val, max_length)

    return collate, loss_fn, evaluate


def _accuracy(model, tokenizer, texts, y, max_length: int) -> float:
    from edgekit.converters.training.loop import predict_logits

    return float((predict_logits(model, tokenizer, texts, max_length=max_length).argmax(-1) == y).mean())


def _record(config: FinetuneConfig, base_dir: Path, pooling: str, labels: list[str], probe_accuracy, result,
            train_ds, val_ds) -> dict:
    """What edgekit_training.json says of the model: base, pooling, scores, history, data, options."""
    return {
        "base": str(config.base or "minilm-l6"),
        "base_dir": str(base_dir),
        "pooling": pooling,
        "labels": labels,
        "probe_validation_accuracy": probe_accuracy,
        "validation_accuracy": result.best_score,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "max_length": config.max_length,
        "data": {"train": train_ds.fingerprint(), "validation": val_ds.fingerprint()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }


def _write_model_dir(model, tokenizer, record: dict, out: Path) -> None:
    """Save into a temporary sibling directory, then move into place: no half-written model."""
    from edgekit.atomic import building_dir

    with building_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
