"""``edgekit demo``: the main job end to end on the embedded default data set.

1. fine-tune the cloud model on ``shop_intents`` (cached: a second run reuses it);
2. evaluate it on the held-out test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgekit.cache import cache_dir, cache_key
from edgekit.datasets import split_path

__all__ = ["DemoConfig", "run_demo"]

# The recipe of the demo's cloud model: part of the cache key.
_FINETUNE = {
    "base": "minilm-l6",
    "epochs": 12,
    "batch_size": 16,
    "learning_rate": 1.5e-4,
    "patience": 3,
    "seed": 0,
    "max_length": 64,
}


def cloud_model_dir(echo: Callable[[str], None]) -> Path:
    """Fine-tune the demo's cloud model, or reuse the cached one."""
    from edgekit.converters.finetune import FinetuneConfig, finetune

    train, validation = split_path("train"), split_path("validation")
    model_dir = cache_dir() / "models" / f"shop-intents-{cache_key(train, validation, **_FINETUNE)}"
    if (model_dir / "config.json").is_file():
        echo(f"[1] cloud model: reusing cached {model_dir}")
        return model_dir
    echo(f"[1] cloud model: fine-tuning {_FINETUNE['base']} on the embedded shop_intents data (a few minutes on 2 cores)")
    started = time.perf_counter()
    result = finetune(
        FinetuneConfig(
            train=train,
            validation=validation,
            out=model_dir,
            base=_FINETUNE["base"],
            epochs=_FINETUNE["epochs"],
            batch_size=_FINETUNE["batch_size"],
            patience=_FINETUNE["patience"],
            seed=_FINETUNE["seed"],
            max_length=_FINETUNE["max_length"],
            learning_rate=_FINETUNE["learning_rate"],
        )
    )
    echo(
        f"    validation accuracy {result.validation_accuracy:.4f} (best epoch {result.best_epoch}) "
        f"in {time.perf_counter() - started:.0f} s → {model_dir}"
    )
    return model_dir


def run_demo(out: Path, echo: Callable[[str], None]) -> None:
    from edgekit.converters.evaluate import evaluate_model_dir
    from edgekit.data import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    model_dir = cloud_model_dir(echo)
    test = load_dataset(split_path("test"))
    metrics = evaluate_model_dir(model_dir, test)
    echo(
        f"[2] cloud model on the held-out test split ({len(test)} texts): "
        f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    )
