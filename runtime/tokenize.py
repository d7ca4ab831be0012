"""Tokenization in the runtime from the bundle's ``tokenizer.json`` (the ``tokenizers`` package).

No transformers here: the same Rust tokenizer the converter used, loaded from the file the
bundle carries, so token ids are identical on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import ManifestError, MissingDependencyError

__all__ = ["Encoded", "TextTokenizer"]

Encoded = tuple[np.ndarray, np.ndarray]  # (input_ids, attention_mask), int64, shape (batch, length)


class TextTokenizer:
    def __init__(self, path: str | Path, max_length: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - part of the runtime extra
            raise MissingDependencyError("tokenizers", "runtime", what="the edgekit runtime") from exc
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise ManifestError(f"{path}: not a valid tokenizer.json ({exc})") from exc
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>", "<PAD>"):
            found = self._tok.token_to_id(token)
            if found is not None:
                return found
        return 0

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids (truncated to ``max_length``), not padded: :meth:`pad` them later."""
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> Encoded:
        """Token ids and mask, padded to ``pad_to`` (truncating to it) or to the longest text."""
        encodings = self._tok.encode_batch(list(texts))
        return self.pad([e.ids for e in encodings], pad_to or max((len(e.ids) for e in encodings), default=1))

    def encode_rows(self, texts: Sequence[str], pad_to: Callable[[int], int | None] | None = None) -> list[Encoded]:
        """Each text on its own, ``(1, length)``, with one tokenizer call for all of them: padded to
        ``pad_to(its length)`` when given (and not None), else not padded at all."""
        rows = []
        for enc in self._tok.encode_batch(list(texts)):
            length = (pad_to(len(enc.ids)) if pad_to is not None else None) or len(enc.ids)
            rows.append(self.pad([enc.ids], length))
        return rows

    def pad(self, sequences: Sequence[list[int]], length: int) -> Encoded:
        """``sequences`` (token ids) as one ``(len(sequences), length)`` batch: padded, or truncated
        to ``length`` keeping each text's closing special token."""
        ids = np.full((len(sequences), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.int64)
        for row, full in enumerate(sequences):
            seq = full[:length]
            if len(seq) < len(full) and length >= 2:
                seq = seq[: length - 1] + [full[-1]]  # keep the closing special token ([SEP])
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask
