"""TFLite backend: one ``model.tflite`` with one signature per sequence-length bucket.

litert-torch cannot convert a dynamic sequence length (NOTES.md), so the exporter writes one
signature per bucket (``seq_16``, ``seq_32``, ...) sharing the weights, each with a fixed batch.
This backend runs the signature whose length is the padded length it is given and refuses any
other length: :class:`edgekit.runtime.model.BundleModel` pads to a bucket and splits batches by
``max_batch``.

It prefers ai-edge-litert and accepts tflite-runtime, which is what some devices have. NOTES.md
measured tflite-runtime 2.14 returning all-zero logits without an error for an ai-edge-quantizer
int8 model, so every output is checked: all-zero rows or non-finite values raise instead of
reaching a user as a confident wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import (
    InvalidInput,
    ManifestError,
    MissingDependencyError,
    ModelError,
)
from edgekit.manifest import MODEL_INPUTS, Manifest, signature_name
from edgekit.registry import ENGINES, EngineSpec

__all__ = ["ENGINE", "TfliteBackend", "load", "signature_name"]

ENGINE = ENGINES.add_spec(EngineSpec(
    name="tflite", loader="edgekit.runtime.backends.tflite:load", formats=("tflite",),
    requires=("ai_edge_litert", "tflite_runtime"), distributions=("ai-edge-litert", "tflite-runtime"),
    aliases=("litert", "tflite-runtime", "ai-edge-litert"),
))

INPUT_NAMES = MODEL_INPUTS
_SIGNATURE = re.compile(r"seq_(\d+)")


def _interpreter_class():
    """(Interpreter class, engine name): ai-edge-litert first, tflite-runtime as the fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError as exc:  # tflite-runtime 2.14 also fails to import under numpy 2
        raise MissingDependencyError("ai-edge-litert", "runtime", what="the tflite backend") from exc
    return Interpreter, "tflite-runtime"


class _Signature:
    """One bucket's runner with its input dtypes and output dequantization read once at load."""

    def __init__(self, runner, where: str) -> None:
        inputs = runner.get_input_details()
        if set(inputs) != set(INPUT_NAMES):
            raise ManifestError(f"{where} takes inputs {sorted(inputs)}, expected {', '.join(INPUT_NAMES)}")
        shapes = {tuple(int(d) for d in details["shape"]) for details in inputs.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ManifestError(f"{where} has input shapes {sorted(shapes)}, expected one (batch, length)")
        self.batch, self.length = next(iter(shapes))
        self.dtypes = {name: details["dtype"] for name, details in inputs.items()}
        outputs = runner.get_output_details()
        if len(outputs) != 1:
            raise ManifestError(f"{where} has outputs {sorted(outputs)}, expected just the logits")
        (self.output, details), = outputs.items()
        params = details["quantization_parameters"]
        # A statically quantized model returns int8/int16 logits: real = (q - zero_point) * scale.
        self.scale = float(params["scales"][0]) if len(params["scales"]) else None
        self.zero_point = float(params["zero_points"][0]) if len(params["zero_points"]) else 0.0
        self.runner = runner

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in self.dtypes.items()}
        out = self.runner(**feed)[self.output]
        if self.scale is None:
            return np.array(out, dtype=np.float32)
        return ((out.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


class TfliteBackend:
    name = "tflite"
    rows_interact = False  # its int8 kernels quantize each row on its own (and a call takes a fixed batch)

    def __init__(self, model_path: Path, buckets: Sequence[int], *, threads: int | None = None) -> None:
        """``buckets`` are the manifest's: they must be exactly the model's signatures."""
        interpreter_class, self.engine = _interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=str(model_path), num_threads=threads)
            signatures = list(self._interpreter.get_signature_list())
        except (RuntimeError, ValueError) as exc:  # the interpreter's load errors
            raise ManifestError(f"{model_path}: {self.engine} cannot load the model ({exc})") from exc
        found = {int(m.group(1)): key for key in signatures if (m := _SIGNATURE.fullmatch(key))}
        if sorted(found) != sorted(buckets) or len(found) != len(signatures):
            raise ManifestError(
                f"{model_path}: the manifest lists buckets {sorted(buckets)} but the model has the "
                f"signatures {sorted(signatures)}: manifest and model do not belong together"
            )
        self._signatures: dict[int, _Signature] = {}
        for length, key in found.items():
            sig = _Signature(self._interpreter.get_signature_runner(key), f"{model_path} signature {key!r}")
            if sig.length != length:
                raise ManifestError(f"{model_path}: signature {key!r} takes length {sig.length}, not {length}")
            self._signatures[length] = sig
        batches = {sig.batch for sig in self._signatures.values()}
        if len(batches) != 1:
            raise ManifestError(f"{model_path}: signatures have different batch sizes {sorted(batches)}")
        self.buckets: tuple[int, ...] = tuple(sorted(self._signatures))
        self.max_batch: int = batches.pop()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
            raise InvalidInput(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} differ")
        rows, length = input_ids.shape
        sig = self._signatures.get(length)
        if sig is None:
            raise InvalidInput(
                f"this TFLite model takes sequence lengths {list(self.buckets)}, not {length}: pad to a bucket"
            )
        if rows != sig.batch:
            raise InvalidInput(f"this TFLite model takes batches of exactly {sig.batch} texts, not {rows}")
        logits = sig({"input_ids": input_ids, "attention_mask": attention_mask})
        broken = "non-finite" if not np.isfinite(logits).all() else "all-zero" if not logits.any(axis=-1).all() else ""
        if broken:
            raise ModelError(
                f"{self.engine} returned {broken} logits: this runtime cannot run this model correctly",
                hint="run it with ai-edge-litert (pip install ai-edge-litert)",
            )
        return logits

    def close(self) -> None:
        self._signatures = {}
        self._interpreter = None


def load(bundle_dir: Path, manifest: Manifest, *, threads: int | None = None) -> TfliteBackend:
    files = manifest.model_files
    model_file = next((f for f in files if f.endswith(".tflite")), files[0])
    return TfliteBackend(Path(bundle_dir) / model_file, manifest.buckets, threads=threads)
