"""``edgekit finetune``: a pretrained encoder → a fine-tuned sequence classifier (the "cloud model").

This stands in for the cloud training job real users already have: it writes a standard
Hugging Face model directory (labels in ``config.json``, tokenizer files) that
``edgekit convert`` and ``edgekit serve-cloud`` take as input.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekit.data import load_splits
from edgekit.errors import ModelError

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "TRAINING_RECORD"]

log = logging.getLogger(__name__)

TRAINING_RECORD = "edgekit_training.json"


@dataclass(frozen=True)
class FinetuneConfig:
    train: Path
    validation: Path
    out: Path
    base: str | Path | None = None  # packaged model name or local HF directory; None = default
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-4
    max_length: int = 64
    seed: int = 0
    patience: int = 2
    text_field: str = "text"
    label_field: str = "label"
    progress: bool = True
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FinetuneResult:
    model_dir: Path
    validation_accuracy: float
    labels: list[str]
    best_epoch: int


def _load_classifier(base_dir: Path, labels: list[str]):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is the point here

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir, use_fast=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load a sequence classifier from {base_dir}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{base_dir}: edgekit needs a fast tokenizer (tokenizer.json)")
    return model, tokenizer


def finetune(config: FinetuneConfig) -> FinetuneResult:
    import torch

    from edgekit.converters.pretrained import resolve_base
    from edgekit.converters.training import TrainConfig, encode, predict_logits, seed_everything, train

    train_ds, val_ds, _ = load_splits(
        config.train, config.validation, text_field=config.text_field, label_field=config.label_field
    )
    labels = train_ds.label_set
    label2id = {label: i for i, label in enumerate(labels)}
    base_dir = resolve_base(config.base)
    seed_everything(config.seed)
    model, tokenizer = _load_classifier(base_dir, labels)

    def collate(items: list[tuple[str, int]]) -> dict:
        batch = encode(tokenizer, [t for t, _ in items], config.max_length)
        batch["labels"] = torch.tensor([y for _, y in items])
        return batch

    def loss_fn(m, batch: dict):
        return m(**batch).loss

    y_val = [label2id[label] for label in val_ds.labels]

    def evaluate(m) -> float:
        logits = predict_logits(m, tokenizer, val_ds.texts, max_length=config.max_length)
        return float((logits.argmax(-1) == y_val).mean())

    examples = [(t, label2id[y]) for t, y in zip(train_ds.texts, train_ds.labels)]
    result = train(
        model,
        examples,
        collate,
        loss_fn,
        evaluate,
        TrainConfig(
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            patience=config.patience,
            seed=config.seed,
            progress=config.progress,
        ),
        description="finetune",
    )

    record = {
        "base": str(config.base or "minilm-l6"),
        "base_dir": str(base_dir),
        "labels": labels,
        "validation_accuracy": result.best_score,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "max_length": config.max_length,
        "data": {"train": train_ds.fingerprint(), "validation": val_ds.fingerprint()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    out = Path(config.out)
    _write_model_dir(model, tokenizer, record, out)
    return FinetuneResult(out, result.best_score, labels, result.best_epoch)


def _write_model_dir(model, tokenizer, record: dict, out: Path) -> None:
    """Save into a temporary sibling directory, then move into place: no half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
