"""ONNX Runtime backend (CPU execution provider)."""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

import numpy as np

from edgekit.errors import ManifestError, MissingDependencyError
from edgekit.manifest import Manifest
from edgekit.registry import ENGINES, EngineSpec

__all__ = ["ENGINE", "OnnxRuntimeBackend", "load", "quantizes_per_batch"]

ENGINE = ENGINES.add_spec(EngineSpec(
    name="onnxruntime", loader="edgekit.runtime.backends.onnxruntime:load", formats=("onnx",),
    requires=("onnxruntime",), distributions=("onnxruntime",), aliases=("ort", "onnx-runtime"),
))


# ONNX Runtime's dynamic quantization (DynamicQuantizeLinear, or DynamicQuantizeMatMul once fused)
# takes one scale per activation tensor, over every row and every padded position of the batch: on
# banking77's int8 bundle 0.6% of the labels changed between a text alone and the same text in a
# random batch of 8 (benchmarks/RESULTS.md, issue 12, session 10).
_PER_BATCH_OPS = re.compile(rb"DynamicQuantize(?:Linear|MatMul)")


def quantizes_per_batch(model_path: Path) -> bool:
    """Does the ONNX graph quantize its activations dynamically? Searched for in the file's bytes
    (an op type is stored verbatim in its NodeProto): the runtime does not depend on the onnx
    package, and ONNX Runtime does not list a session's nodes."""
    try:
        with open(model_path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False  # nothing to map (and nothing ONNX Runtime would load)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _PER_BATCH_OPS.search(data) is not None
    except OSError as exc:
        raise ManifestError(f"{model_path}: cannot read the model ({exc})") from exc


class OnnxRuntimeBackend:
    name = "onnxruntime"
    buckets: tuple[int, ...] = ()
    max_batch = 0

    def __init__(self, model_path: Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime", "runtime", what="the onnxruntime backend") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ManifestError(f"{model_path}: onnxruntime cannot load the model ({exc})") from exc
        self._names = {i.name for i in self._session.get_inputs()}
        self.rows_interact = quantizes_per_batch(model_path)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._names:  # BERT graphs exported by optimum keep it; one segment
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self._session.run(None, {k: v for k, v in feed.items() if k in self._names})[0]

    def close(self) -> None:
        self._session = None


def load(bundle_dir: Path, manifest: Manifest, *, threads: int | None = None) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(Path(bundle_dir) / manifest.model_files[0], threads=threads)
