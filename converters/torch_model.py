"""The fine-tuned cloud model in torch as a :class:`~edgekit.runtime.types.LogitModel`.

``edgekit serve-cloud`` serves it with the same servers as the edge bundles: the stand-in for
the cloud GPU service (on a GPU when there is one and ``device="cuda"``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import ConfigError
from edgekit.runtime.types import ModelInfo

__all__ = ["TorchModel", "load_torch_model"]


class TorchModel:
    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int = 128) -> None:
        import torch

        from edgekit.converters.evaluate import load_classifier_dir

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
        self._torch = torch
        self.model, self.tokenizer, labels = load_classifier_dir(model_dir)
        self.model.to(device)
        self.device = device
        self.max_length = max_length
        self._lock = threading.Lock()
        self._info = ModelInfo(
            name=Path(model_dir).name, version="torch", format="torch", precision="fp32", backend=f"torch-{device}",
            labels=tuple(labels), max_length=max_length, temperature=1.0, threshold=0.0,
            summary={"model_dir": str(model_dir), "device": device},
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with self._lock, self._torch.no_grad():
            out = self.model(input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device))
        return out.logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None


def load_torch_model(model_dir: str | Path, device: str = "cpu") -> TorchModel:
    return TorchModel(Path(model_dir), device)
