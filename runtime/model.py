"""A bundle loaded for inference: checksums verified, tokenizer + backend + manifest together.

:class:`BundleModel` implements :class:`edgekit.runtime.types.LogitModel`, the thing the cascade
and the servers serve. For static-shape formats it runs the smallest length bucket that fits
the batch's longest text instead of always padding to the longest bucket.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ManifestError
from edgekit.manifest import MANIFEST_NAME, Manifest
from edgekit.monitoring import Reference
from edgekit.runtime.backends import load_backend, resolve_backend
from edgekit.runtime.tokenize import Encoded, TextTokenizer
from edgekit.runtime.types import ModelInfo, check_logits

__all__ = ["BundleModel", "load_bundle_model", "load_model"]


class BundleModel:
    def __init__(self, bundle_dir: Path, manifest: Manifest, backend: str = "auto", *, threads: int | None = None,
                 **engine_options) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        manifest.check_paths(self.bundle_dir)  # also when the checksums are not verified
        self.backend_name = resolve_backend(manifest, backend)
        self.tokenizer = TextTokenizer(self.bundle_dir / manifest.tokenizer_file, manifest.max_length)
        self.backend = load_backend(self.bundle_dir, manifest, self.backend_name, threads=threads, **engine_options)
        self._who = f"{self.bundle_dir}: the model"
        self._lock = threading.Lock()  # not every engine's session is safe to call concurrently
        self._info = ModelInfo(
            name=manifest.name,
            version=manifest.version,
            format=manifest.format,
            precision=manifest.precision,
            backend=self.backend_name,
            labels=tuple(manifest.labels),
            max_length=manifest.max_length,
            temperature=manifest.calibration.temperature,
            threshold=manifest.calibration.threshold,
            summary=manifest.summary(),
            reference=Reference.from_dict(manifest.reference) if manifest.reference else None,
        )
        # one text per engine call, unpadded, when the graph's rows interact: the same answer for a
        # text whatever it is batched with (runtime.backends.base.Backend.rows_interact); as fast as
        # padded batches on 1-2 threads for banking77's int8 bundle (random batches of 8 are mostly
        # padding)
        self._one_per_call = bool(getattr(self.backend, "rows_interact", False)) and self.backend.max_batch <= 1

    @property
    def info(self) -> ModelInfo:
        return self._info

    def _bucket(self, length: int) -> int:
        buckets = sorted(self.backend.buckets)
        for bucket in buckets:
            if bucket >= length:
                return bucket
        return buckets[-1]  # longer texts are truncated to the largest bucket

    def encode(self, texts: Sequence[str]) -> list[Any]:
        """Each text's model input, for :meth:`run_encoded`. Thread-safe and outside the engine's lock
        (the Rust tokenizer is), so a server tokenizes each request in its own thread while the
        engine runs other requests (:class:`~edgekit.runtime.batching.BatchedModel`)."""
        if self._one_per_call:
            return self.tokenizer.encode_rows(texts, self._bucket if self.backend.buckets else None)
        return self.tokenizer.ids(texts)  # padded in run_encoded, to its batch's longest text

    def run_encoded(self, rows: Sequence[Any]) -> np.ndarray:
        """Logits of rows made by :meth:`encode` (of one call or of several, concatenated)."""
        if not rows:
            return np.zeros((0, len(self._info.labels)), np.float32)
        if self._one_per_call:
            batches = rows  # each a ready (1, length) row
        else:
            step = self.backend.max_batch or len(rows)
            batches = [self._padded(rows[start : start + step]) for start in range(0, len(rows), step)]
        out = []
        with self._lock:
            for ids, mask in batches:
                out.append(np.asarray(self.backend.run(ids, mask), dtype=np.float32))
        logits = np.concatenate(out)
        check_logits(logits, len(rows), len(self._info.labels), who=self._who, error=ManifestError)
        return logits

    def _padded(self, ids: Sequence[list[int]]) -> Encoded:
        longest = max(map(len, ids), default=1)
        return self.tokenizer.pad(ids, self._bucket(longest) if self.backend.buckets else longest)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.run_encoded(self.encode(texts))

    def close(self) -> None:
        self.backend.close()


def load_bundle_model(
    bundle_dir: str | Path, backend: str = "auto", threads: int | None = None, *, verify: bool = True
) -> BundleModel:
    """Load a bundle; ``verify`` checks every file's sha256 against the manifest first."""
    bundle_dir = Path(bundle_dir)
    manifest = Manifest.load(bundle_dir)
    if verify:
        manifest.verify(bundle_dir)
    return BundleModel(bundle_dir, manifest, backend, threads=threads)


def load_model(path: str | Path, backend: str = "auto", threads: int | None = None, *, max_length: int = 128,
               verify: bool = True, **engine_options) -> BundleModel:
    """The one way to load a model: an edgekit bundle (``manifest.json``), or a fine-tuned Hugging
    Face classifier directory (``config.json``: the cloud model), described as a ``torch`` bundle
    and run by the torch engine (the ``convert`` extra). ``max_length`` applies to the latter (a
    bundle carries its own); ``engine_options``: e.g. ``device="cuda"`` for the torch engine."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return load_bundle_model(path, backend, threads, verify=verify)
    return BundleModel(path, Manifest.for_model_dir(path, max_length), backend, threads=threads, **engine_options)
