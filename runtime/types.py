"""Transport-neutral domain types of the edge runtime.

The gRPC servicers translate protobuf messages to and from these; the cascade,
the micro-batcher and the backends only ever see these. Nothing here imports
numpy at module level beyond typing, nor grpc, torch or transformers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "ClassifyOptions",
    "LogitModel",
    "ModelInfo",
    "Prediction",
    "Route",
    "check_logits",
]


class Route(str, enum.Enum):
    """Who answered a text."""

    EDGE = "EDGE"  # the local model, confident enough (or the cloud was not asked)
    CLOUD = "CLOUD"  # the cloud model, because the edge was not confident
    EDGE_CLOUD_FAILED = "EDGE_CLOUD_FAILED"  # the cloud was asked and failed: edge answer


@dataclass(frozen=True)
class ClassifyOptions:
    """Per-request options."""

    top_k: int = 1
    allow_cloud: bool = True
    threshold: float | None = None  # overrides the bundle's fallback threshold

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class Prediction:
    """The answer for one text. (The cascade builds it positionally: keep new fields last.)"""

    label: str
    score: float  # calibrated probability of `label` from whoever answered
    top_k: tuple[tuple[str, float], ...]  # (label, probability), best first
    route: Route
    edge_score: float  # the edge model's calibrated max probability
    latency_ms: float
    model_name: str
    model_version: str
    edge_label: str = ""  # the edge model's own top label (for CLOUD answers too: drift and agreement read it)


@dataclass(frozen=True)
class ModelInfo:
    """What GetModelInfo / ModelMetadata report."""

    name: str
    version: str
    format: str  # onnx | openvino | tflite | torch
    precision: str  # fp32 | fp16 | int8 ...
    backend: str  # onnxruntime | openvino | tflite | torch
    labels: tuple[str, ...]
    max_length: int
    temperature: float
    threshold: float
    summary: dict[str, Any] = field(default_factory=dict)  # manifest summary (JSON-able)
    # what normal traffic looks like (edgekit.monitoring.Reference, from the bundle's manifest); None: unknown
    reference: Any = field(default=None, compare=False, repr=False)


@runtime_checkable
class LogitModel(Protocol):
    """A loaded model: texts in, raw (uncalibrated) logits out.

    Implemented by the edge backends (onnxruntime, openvino, tflite: tokenizer +
    session) and by the torch model behind ``edgekit serve-cloud``.
    ``logits`` must be thread-safe or serialise internally.
    """

    @property
    def info(self) -> ModelInfo: ...

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 logits of shape (len(texts), len(info.labels))."""
        ...

    def close(self) -> None: ...


def check_logits(logits, n_texts: int, n_labels: int, *, who: str, error: type[Exception]) -> None:
    """The one shape check of a model's answer: one row per text, one column per label."""
    if getattr(logits, "shape", None) != (n_texts, n_labels):
        raise error(f"{who} returned logits of shape {getattr(logits, 'shape', None)}, expected "
                    f"({n_texts}, {n_labels}): labels and model do not match")
