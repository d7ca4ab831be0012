"""The torch engine's backend: a fine-tuned classifier directory in torch, behind the Backend protocol.

Registered as the ``torch`` engine by :mod:`edgekit.runtime.backends.torch`; loaded through
:func:`edgekit.runtime.model.load_model` like any bundle, so ``edgekit serve-cloud`` (the
stand-in for the cloud GPU service, on a GPU with ``device="cuda"``), the bench's teacher row and
its cold-start probe share one path: the runtime tokenizer from the directory's
``tokenizer.json``, this backend for the forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import ConfigError, MissingDependencyError
from edgekit.manifest import Manifest

__all__ = ["TorchBackend", "load"]


class TorchBackend:
    name = "torch"
    buckets: tuple[int, ...] = ()
    max_batch = 0

    def __init__(self, model_dir: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError as exc:
            raise MissingDependencyError("torch", "convert", what="the torch engine") from exc
        from edgekit.converters.evaluate import load_classifier_dir

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
        self._torch = torch
        self._threads = threads
        self.device = device
        self.model, _, _ = load_classifier_dir(model_dir)
        self.model.to(device)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        if self._threads:  # torch's thread count is process-wide: set it for each call
            torch.set_num_threads(self._threads)
        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(np.ascontiguousarray(input_ids)).to(self.device),
                             attention_mask=torch.from_numpy(np.ascontiguousarray(attention_mask)).to(self.device))
        return out.logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None


def load(model_dir: Path, manifest: Manifest, *, threads: int | None = None, device: str = "cpu") -> TorchBackend:
    return TorchBackend(Path(model_dir), threads=threads, device=device)
