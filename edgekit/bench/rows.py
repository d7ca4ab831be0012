"""Labelled rows for the scenario scripts (benchmarks/drift.py, benchmarks/flywheel.py): read a split,
write a filtered copy, and the fingerprint convert and finetune record for it; and a benchmark script's
figures written to ``--out``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["fingerprint", "read_rows", "write_figures", "write_rows"]


def read_rows(path: Path) -> list[dict]:
    """``{"text", "label"}`` rows of a JSONL/CSV split (edgekit.data's reader and checks)."""
    from edgekit.data import load_dataset

    ds = load_dataset(path)
    return [{"text": t, "label": y} for t, y in zip(ds.texts, ds.labels)]


def write_rows(path: Path, rows: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def fingerprint(rows: Sequence[dict]) -> str:
    """edgekit.data.Dataset.fingerprint of these rows: what convert (``provenance.data``) and finetune record."""
    from edgekit.data import Dataset

    return Dataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), "").fingerprint()


def write_figures(out: Path, stem: str, result: dict, markdown: str) -> None:
    """``OUT/STEM.json`` and ``OUT/STEM.md`` of a benchmark script's ``--out``, each written whole."""
    from edgekit.manifest import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"{stem}.md", markdown)
