"""The Backend protocol: one small class per inference engine, all of the same shape.

A backend loads a bundle's model file(s) and maps (input_ids, attention_mask) int64 arrays to
float32 logits. It knows nothing of text, labels or calibration: :mod:`edgekit.runtime.model`
puts the tokenizer and the manifest around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.manifest import Manifest

__all__ = ["Backend", "BackendFactory"]


class Backend(Protocol):
    name: str
    # Sequence lengths the model accepts, for formats with static shapes (TFLite); () = any.
    buckets: tuple[int, ...]
    # Largest batch one call accepts; 0 = any.
    max_batch: int
    # True when a row's logits depend on the other rows of its call (and on its padding): an int8
    # graph quantized dynamically computes one activation range per tensor, that is per batch.
    # BundleModel then runs such a model one text per call, unpadded, so that a text gets the same
    # answer whatever it is batched with. Optional for third-party backends (default False).
    rows_interact: bool

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(batch, length) int64 arrays → (batch, num_labels) float32 logits."""
        ...

    def close(self) -> None: ...


class BackendFactory(Protocol):
    def __call__(self, bundle_dir: Path, manifest: Manifest, *, threads: int | None = None) -> Backend: ...

