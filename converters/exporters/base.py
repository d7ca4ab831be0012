"""The exporter protocol and registry: one module per format, all of the same shape.

An exporter turns the student (a torch classifier behind :class:`ExportWrapper`) into one
artifact per *variant* ("fp32", "int8-dynamic", ...) in a directory of its own. It does not
evaluate or decide: the pipeline loads every artifact with the runtime backend, measures it,
and keeps what passes the accuracy gate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgekit.registry import Registry

__all__ = ["EXPORTERS", "ExportInputs", "ExportWrapper", "ExportedArtifact", "Exporter", "MASK_NEGATIVE"]

# Added to attention scores at padded positions. transformers uses float32's minimum, which
# wrecks the activation ranges static int8 calibration sees; -30 gives exp(-30) ~ 1e-13 after
# softmax (the same outputs in fp32) with a sane range (NOTES.md: rescued static quantization).
MASK_NEGATIVE = -30.0


class ExportWrapper(torch.nn.Module):
    """(input_ids, attention_mask) int64 → logits float32; the graph every format exports."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        base = getattr(model, model.base_model_prefix, model)

        def finite_mask(attention_mask, input_shape=None, dtype=None):
            mask = attention_mask[:, None, None, :].to(torch.float32)
            return (1.0 - mask) * MASK_NEGATIVE

        # Eager attention calls get_extended_attention_mask; replace it on this instance only.
        base.get_extended_attention_mask = finite_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@dataclass(frozen=True)
class ExportInputs:
    wrapper: ExportWrapper  # eval mode, CPU, eager attention
    tokenizer_file: Path  # the student's tokenizer.json (copied into the bundle by the pipeline)
    num_labels: int
    max_length: int
    buckets: tuple[int, ...]  # sequence lengths for static-shape formats, ascending
    calibration_texts: Sequence[str]  # representative texts for static quantization
    # texts, pad_to (None = longest) -> (input_ids, attention_mask) int64 numpy arrays
    encode: Callable[[Sequence[str], int | None], tuple[np.ndarray, np.ndarray]]


@dataclass
class ExportedArtifact:
    format: str
    precision: str  # fp32 | fp16 | int8 | ...
    variant: str  # unique within the format, e.g. "int8-dynamic-per-channel"
    directory: Path  # holds exactly the model files below
    model_files: list[str]
    buckets: list[int] = field(default_factory=list)  # [] = dynamic axes
    details: dict[str, Any] = field(default_factory=dict)  # how it was made (for the manifest)


class Exporter(Protocol):
    format: str

    def variants(self) -> list[str]:
        """Every variant this exporter can make, fp32 first."""
        ...

    def export(self, inputs: ExportInputs, variant: str, out_dir: Path) -> ExportedArtifact: ...


EXPORTERS: Registry[Callable[[], Exporter]] = Registry("export target")
