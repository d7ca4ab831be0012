"""Batched evaluation returns logits in the texts' order, however it groups them."""

from __future__ import annotations

import numpy as np

from edgekit.converters.measure import batched_logits


class _RecordingModel:
    """Logits that identify their text (its length and first letter); records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def logits(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return np.array([[len(t), ord(t[0])] for t in texts], np.float32)


TEXTS = ["a" * 9, "b", "c" * 30, "d" * 2, "e" * 12, "f" * 5, "g"]


def test_by_length_groups_similar_lengths_and_keeps_the_order() -> None:
    model = _RecordingModel()
    logits = batched_logits(model, TEXTS, batch_size=3, by_length=True)
    assert logits.tolist() == [[len(t), ord(t[0])] for t in TEXTS]
    assert [[len(t) for t in b] for b in model.batches] == [[1, 1, 2], [5, 9, 12], [30]]


def test_default_batches_in_the_given_order() -> None:
    model = _RecordingModel()
    logits = batched_logits(model, TEXTS, batch_size=3)
    assert logits.tolist() == [[len(t), ord(t[0])] for t in TEXTS]
    assert model.batches == [TEXTS[:3], TEXTS[3:6], TEXTS[6:]]
