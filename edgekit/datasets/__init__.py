"""Data sets shipped inside the package.

``shop_intents``: the embedded default, shoppers' queries to a store kiosk or shopping app in
23 intents, written by the edgekit authors (see ``shop_intents/DATA_CARD.md``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DATASET", "dataset_dir", "split_path"]

DEFAULT_DATASET = "shop_intents"
_SPLITS = ("train", "validation", "test")


def dataset_dir(name: str = DEFAULT_DATASET) -> Path:
    path = Path(__file__).parent / name
    if not path.is_dir():
        from edgekit.errors import ConfigError

        known = sorted(p.name for p in Path(__file__).parent.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise ConfigError(f"no embedded data set {name!r} (known: {', '.join(known)})")
    return path


def split_path(split: str, name: str = DEFAULT_DATASET) -> Path:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return dataset_dir(name) / f"{split}.jsonl"
