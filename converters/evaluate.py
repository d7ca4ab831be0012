"""Evaluate a Hugging Face classifier directory (the teacher / cloud model) on labelled data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.data import Dataset
from edgekit.errors import ModelError
from edgekit.metrics import classification_metrics

__all__ = ["evaluate_model_dir", "label_ids", "load_classifier_dir"]


def load_classifier_dir(model_dir: Path, *, attn_implementation: str | None = None):
    """Load (model, tokenizer, labels) from a fine-tuned classifier directory with labels in config.json.

    An edgekit directory (mean or [CLS] pooling, see :mod:`edgekit.converters.classifier`) or a
    Hugging Face ``*ForSequenceClassification`` one.
    """
    from transformers import AutoTokenizer

    from edgekit.converters.classifier import load_classifier

    if not (Path(model_dir) / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    model = load_classifier(Path(model_dir), attn_implementation=attn_implementation)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer in {model_dir}: {exc}") from exc
    id2label = model.config.id2label
    labels = [id2label[i] for i in range(model.config.num_labels)]
    if any(label.startswith("LABEL_") for label in labels):
        raise ModelError(f"{model_dir}: config.json has no label names (id2label holds {labels[0]!r}, ...)")
    model.eval()
    return model, tokenizer, labels


def label_ids(data: Dataset, labels: list[str]) -> np.ndarray:
    """``data``'s labels as ids of the model's ``labels`` (an unknown label is a ModelError)."""
    from edgekit.data import label_ids as to_ids

    return to_ids(data.labels, labels, where=str(data.source), error=ModelError)


def evaluate_model_dir(model_dir: Path, data: Dataset, *, max_length: int = 128) -> dict[str, float]:
    from edgekit.converters.training.loop import predict_logits

    model, tokenizer, labels = load_classifier_dir(model_dir)
    y = label_ids(data, labels)
    logits = predict_logits(model, tokenizer, data.texts, max_length=max_length)
    return classification_metrics(logits, y)
