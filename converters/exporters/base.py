"""The exporter protocol and registry: one module per format, all of the same shape.

An exporter turns the student (a torch classifier behind
:class:`~edgekit.converters.classifier.ExportWrapper`) into one
artifact per *variant* ("fp32", "int8-dynamic", ...) in a directory of its own. It does not
evaluate or decide: the pipeline loads every artifact with the runtime backend, measures it,
and keeps what passes the accuracy gate.

Each exporter module registers one :class:`~edgekit.registry.FormatSpec` (in
:data:`edgekit.registry.FORMATS`) at import and imports its heavy libraries (torch, onnx,
openvino, litert-torch) only inside its functions, so listing the formats stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from edgekit.errors import ConversionError

__all__ = ["ExportInputs", "ExportedArtifact", "Exporter", "variant_entry"]

_Entry = TypeVar("_Entry")  # what a format's variant table holds for each variant


@dataclass(frozen=True)
class ExportInputs:
    wrapper: Any  # an ExportWrapper (torch): eval mode, CPU, eager attention
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


def variant_entry(variants: Mapping[str, _Entry], variant: str, format_name: str) -> _Entry:
    """``variants[variant]``, the exporter's recipe for it; a ConversionError naming the known ones otherwise."""
    if variant not in variants:
        raise ConversionError(f"unknown {format_name} variant {variant!r} (known: {', '.join(variants)})")
    return variants[variant]
