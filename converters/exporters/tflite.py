"""TFLite: litert-torch fp32 with one signature per length bucket, and ai-edge-quantizer variants.

litert-torch cannot convert a dynamic sequence length nor (measured: jax lowering of BERT's
``expand``) a dynamic batch, so ``model.tflite`` holds one signature per bucket (``seq_16``,
``seq_32``, ...), each with batch 1, all sharing the weights. A fixed batch of 8 ran 8 texts
only 1.3x faster than 8 calls on the tiny model and made a single text 6x slower: batch 1.

Conversion (torch.export + jax lowering) is the slow part, so an exporter converts fp32 once per
:class:`ExportInputs` and quantizes every other variant from those bytes: keep one exporter
instance for all variants of a model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
from edgekit.converters.exporters.base import ExportedArtifact, ExportInputs, variant_entry

from edgekit.errors import ConversionError, MissingDependencyError
from edgekit.manifest import MODEL_INPUTS as INPUT_NAMES
from edgekit.manifest import signature_name
from edgekit.registry import FORMATS, FormatSpec

__all__ = ["FORMAT", "TfliteExporter"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
BATCH = 1
# Static calibration runs every text through every bucket's signature with all tensors kept
# (5.5 s for 64 texts x 2 buckets on the 2-layer test model): the pipeline's 300 texts would cost
# minutes on MiniLM with 4 buckets.
MAX_CALIBRATION = 100

# variant -> (precision, ai-edge-quantizer recipe; None = the litert-torch fp32 model itself)
_VARIANTS: dict[str, tuple[str, str | None]] = {
    "fp32": ("fp32", None),
    "fp16": ("fp16", "weight_only_fp16"),
    "int8-dynamic": ("int8", "dynamic_wi8_afp32"),
    "int8-weights": ("int8", "weight_only_wi8_afp32"),
    "int8-static": ("int8", "static_wi8_ai8"),
}
# The variant table and the spec are this format's own data, in the shape every exporter module has
# (ARCHITECTURE.md, "add an export format"): alike on purpose, nothing to share.
FORMAT = FORMATS.add_spec(FormatSpec(
    name="tflite", exporter="edgekit.converters.exporters.tflite:TfliteExporter", variants=tuple(_VARIANTS),
    demo_variants=("int8-dynamic",), requires=("litert_torch", "ai_edge_litert"), aliases=("litert",),
))

# Root-logger records the libraries emit on every export of these models, expected here:
# litert-torch announces the int64 -> int32 input downcast the runtime casts for, and the
# quantizer's fp16 path reports re-writing weight buffers the bucket signatures share (with the
# same fp16 data each time).
_EXPECTED_LOGS = ("downcasts 64-bit model I/O", "is overriding other previously quantized data")


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _EXPECTED_LOGS)


@contextlib.contextmanager
def quiet_quantizer():
    """Switch off ai-edge-quantizer's tqdm bars for one call (unless edgekit logs at INFO, ``-v``).

    ``Quantizer.calibrate`` builds its "Running Calibration" bar without an enable switch, so the
    only handle is the bar class's own ``enable`` argument: its default is overridden here and
    restored on exit (a monkeypatch, because the library offers no setting for it).
    """
    try:
        from ai_edge_quantizer.utils import progress_utils
    except ImportError:
        yield
        return
    if logging.getLogger("edgekit").isEnabledFor(logging.INFO):
        yield
        return
    original = progress_utils.ProgressBar.__init__

    def quiet_init(self, total_steps, description="", disappear_on_finish=False, enable=None):
        original(self, total_steps, description, disappear_on_finish, enable=False if enable is None else enable)

    progress_utils.ProgressBar.__init__ = quiet_init
    try:
        yield
    finally:
        progress_utils.ProgressBar.__init__ = original


@contextlib.contextmanager
def quiet_native_stderr():
    """Send what native code writes to file descriptor 2 to /dev/null for one call (unless ``-v``).

    TensorFlow's converter, loaded by litert-torch, logs through absl/C++ before any Python switch
    can reach it ("All log messages before absl::InitializeLog() ...", oneDNN notices); only the
    descriptor itself can be silenced. Python exceptions still carry the converter's errors.
    """
    if logging.getLogger("edgekit").isEnabledFor(logging.INFO):
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _quiet_libraries():
    """Drop the expected library log records and litert-torch's console progress for one call."""
    root, drop = logging.getLogger(), _DropExpected()
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # litert-torch reads it at every step
    root.addFilter(drop)
    try:
        with quiet_quantizer(), quiet_native_stderr():
            yield
    finally:
        root.removeFilter(drop)
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def convert_fp32(inputs: ExportInputs) -> bytes:
    import torch

    """The fp32 flatbuffer: one signature per bucket, inputs named input_ids/attention_mask (int32)."""
    try:
        import litert_torch
    except ImportError as exc:
        raise MissingDependencyError("litert-torch", "convert", what="the TFLite export") from exc
    converter = litert_torch.Converter()
    sample = (list(inputs.calibration_texts[:1]) or ["hello"]) * BATCH
    for length in inputs.buckets:
        ids, mask = inputs.encode(sample, length)
        kwargs = dict(zip(INPUT_NAMES, (torch.from_numpy(ids), torch.from_numpy(mask))))
        converter.add_signature(signature_name(length), inputs.wrapper, sample_kwargs=kwargs)
    try:
        # torch.export warns (FutureWarning, attributed to copyreg) about its own pytree LeafSpec use.
        with _quiet_libraries(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return converter.convert().model_content()
    except Exception as exc:  # torch.export, jax and the MLIR converter raise many unrelated types
        raise ConversionError(f"litert-torch conversion failed: {exc}") from exc


def _recipe(name: str):
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe, recipe_manager

    if name != "weight_only_fp16":
        return getattr(recipe, name)()
    # ai-edge-quantizer 0.10 has no fp16 recipe function; its FLOAT_CASTING algorithm is the fp16
    # weight-only path, for the ops it supports (the embedding is an EMBEDDING_LOOKUP here).
    manager = recipe_manager.RecipeManager()
    for op in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.EMBEDDING_LOOKUP):
        manager.add_weight_only_config(".*", op, 16, algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return manager.get_quantization_recipe()


def _calibration_data(inputs: ExportInputs) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every calibration text at every bucket, one text per run as the runtime feeds them."""
    texts = list(inputs.calibration_texts)[:MAX_CALIBRATION]
    data = {}
    for length in inputs.buckets:
        rows = []
        for text in texts:
            ids, mask = inputs.encode([text], length)
            rows.append({"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)})
        data[signature_name(length)] = rows
    return data


def quantize(fp32: bytes, recipe_name: str, inputs: ExportInputs) -> bytes:
    from ai_edge_quantizer import quantizer

    try:
        # Calibration, and quantize's check of its result, build interpreters that keep every
        # tensor (how the quantizer reads activation ranges); ai-edge-litert warns that this mode
        # is meant for debugging.
        with _quiet_libraries(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors", category=UserWarning)
            q = quantizer.Quantizer(fp32, _recipe(recipe_name))
            calibration = None
            if q.need_calibration:
                calibration = q.calibrate(_calibration_data(inputs), num_threads=os.cpu_count() or 1)
            result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    except Exception as exc:  # the quantizer raises ValueError, RuntimeError, KeyError, ...
        raise ConversionError(f"ai-edge-quantizer ({recipe_name}) failed: {exc}") from exc
    return bytes(result.quantized_model)


class TfliteExporter:
    format = "tflite"

    def __init__(self) -> None:
        self._fp32: tuple[ExportInputs, bytes] | None = None  # the last conversion, for its variants

    def variants(self) -> list[str]:
        return list(_VARIANTS)

    def _fp32_for(self, inputs: ExportInputs) -> bytes:
        if self._fp32 is None or self._fp32[0] is not inputs:
            start = time.perf_counter()
            self._fp32 = (inputs, convert_fp32(inputs))
            log.info("litert-torch converted %d buckets in %.1f s", len(inputs.buckets), time.perf_counter() - start)
        return self._fp32[1]

    def export(self, inputs: ExportInputs, variant: str, out_dir: Path) -> ExportedArtifact:
        precision, recipe_name = variant_entry(_VARIANTS, variant, "TFLite")
        if not inputs.buckets:
            raise ConversionError("TFLite needs at least one sequence-length bucket (static shapes only)")
        if variant == "int8-static" and not inputs.calibration_texts:
            raise ConversionError("TFLite int8-static needs calibration texts (calibration_texts is empty)")
        model = self._fp32_for(inputs)
        details: dict = {"converter": "litert-torch", "batch": BATCH,
                         "signatures": [signature_name(n) for n in inputs.buckets]}
        if recipe_name is not None:
            model = quantize(model, recipe_name, inputs)
            details["recipe"] = recipe_name
            if variant == "int8-static":
                details["calibration_texts"] = min(len(inputs.calibration_texts), MAX_CALIBRATION)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MODEL_FILE).write_bytes(model)
        return ExportedArtifact(
            format=self.format,
            precision=precision,
            variant=variant,
            directory=out_dir,
            model_files=[MODEL_FILE],
            buckets=list(inputs.buckets),
            details=details,
        )
