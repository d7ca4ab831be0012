from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs(*modules: str):
    """Skip (with the reason) when an optional extra is missing."""
    missing = [m for m in modules if not has(m)]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (an edgekit extra)")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_splits(tmp_path_factory) -> dict[str, Path]:
    """A small slice of the embedded shop_intents data: 6 intents, every split."""
    from edgekit.data import load_dataset
    from edgekit.datasets import split_path

    keep = ["order_status", "store_hours", "refund_status", "gift_card", "talk_to_human", "out_of_scope"]
    out = tmp_path_factory.mktemp("small")
    paths = {}
    for split in ("train", "validation", "test"):
        ds = load_dataset(split_path(split))
        rows = [{"text": t, "label": y} for t, y in zip(ds.texts, ds.labels) if y in keep]
        random.Random(0).shuffle(rows)
        paths[split] = write_jsonl(out / f"{split}.jsonl", rows)
    return paths


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, small_splits) -> Path:
    """A tiny pretrained-encoder stand-in built in code (2-layer BERT + WordPiece tokenizer)."""
    pytest.importorskip("torch", reason="needs the convert extra")
    from edgekit.data import load_dataset
    from tests.tiny import make_tiny_bert

    texts = load_dataset(small_splits["train"]).texts
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-base"), texts)
