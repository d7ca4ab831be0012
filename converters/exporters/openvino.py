"""OpenVINO IR: fp32 and fp16 weights, NNCF weight-only int8, and NNCF static int8.

Every variant starts from the fp32 ONNX export (:func:`.onnx.export_fp32`) and goes through
``openvino.convert_model`` + ``openvino.save_model``: the path NOTES.md verified for these models.
Converting from the ONNX file also gives the inputs their plain names (from torch, OpenVINO may
add alias names), keeps the dynamic batch/sequence axes, and keeps ExportWrapper's finite
attention mask that static int8 calibration needs.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from edgekit.converters.exporters.base import ExportedArtifact, ExportInputs, variant_entry
from edgekit.converters.exporters.onnx import OPSET, export_fp32

from edgekit.errors import ConversionError, MissingDependencyError
from edgekit.manifest import MODEL_INPUTS as INPUT_NAMES
from edgekit.registry import FORMATS, FormatSpec

__all__ = ["FORMAT", "OpenVinoExporter"]

log = logging.getLogger(__name__)

MODEL_FILES = ["model.xml", "model.bin"]
# nncf.quantize's own default subset_size: the cap on calibration texts used.
MAX_CALIBRATION = 300

# variant -> (precision, how; "ir" = plain conversion)
_VARIANTS: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "ir"),
    "fp16": ("fp16", "ir"),
    "int8-weights": ("int8", "compress_weights"),
    "int8": ("int8", "quantize"),
}
FORMAT = FORMATS.add_spec(FormatSpec(
    name="openvino", exporter="edgekit.converters.exporters.openvino:OpenVinoExporter", variants=tuple(_VARIANTS),
    demo_variants=("int8-weights",), requires=("openvino", "nncf"), aliases=("ov", "openvino-ir"),
))


def _check_inputs(model) -> None:
    """Refuse an IR without both inputs or with a fixed batch/sequence axis: the runtime pads freely."""
    for name in INPUT_NAMES:
        port = next((p for p in model.inputs if name in p.get_names()), None)
        if port is None:
            raise ConversionError(f"the OpenVINO model has no input named {name!r}")
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 2 or not (shape[0].is_dynamic and shape[1].is_dynamic):
            raise ConversionError(f"the OpenVINO input {name!r} has shape {shape}, expected dynamic [?, ?]")


def _calibration_dataset(inputs: ExportInputs, nncf):
    """One text per item, unpadded: calibration sees the token statistics the device will feed."""
    texts = list(inputs.calibration_texts)[:MAX_CALIBRATION]
    if not texts:
        raise ConversionError("OpenVINO int8 needs calibration texts (ExportInputs.calibration_texts is empty)")

    def feed(text: str) -> dict:
        ids, mask = inputs.encode([text], None)
        return dict(zip(INPUT_NAMES, (ids, mask)))

    return nncf.Dataset(texts, feed), len(texts)


class OpenVinoExporter:
    format = "openvino"

    def variants(self) -> list[str]:
        return list(_VARIANTS)

    def export(self, inputs: ExportInputs, variant: str, out_dir: Path) -> ExportedArtifact:
        precision, how = variant_entry(_VARIANTS, variant, "OpenVINO")
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingDependencyError("openvino", "convert", what="the OpenVINO export") from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        details: dict = {"source": "onnx", "opset": OPSET, "openvino": ov.__version__}
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "fp32.onnx"
            export_fp32(inputs, onnx_path)
            try:
                model = ov.convert_model(str(onnx_path))
            except Exception as exc:  # OpenVINO raises OpConversionFailure, RuntimeError, ...
                raise ConversionError(f"OpenVINO conversion of the ONNX model failed: {exc}") from exc
            if how != "ir":
                model = self._compress(inputs, model, how, details)
            _check_inputs(model)
            # fp16 stores fp16 weights (the CPU computes in fp32 either way); the int8 variants
            # keep the weights NNCF left in float (norms, biases) in fp32.
            details["compress_to_fp16"] = fp16 = variant == "fp16"
            try:
                ov.save_model(model, str(out_dir / MODEL_FILES[0]), compress_to_fp16=fp16)
            except Exception as exc:
                raise ConversionError(f"writing the OpenVINO IR to {out_dir} failed: {exc}") from exc
        log.info("openvino %s: %.1f MB", variant, (out_dir / MODEL_FILES[1]).stat().st_size / 1e6)
        return ExportedArtifact(
            format=self.format,
            precision=precision,
            variant=variant,
            directory=out_dir,
            model_files=list(MODEL_FILES),
            details=details,
        )

    @staticmethod
    def _compress(inputs: ExportInputs, model, how: str, details: dict):
        try:
            import nncf
        except ImportError as exc:
            raise MissingDependencyError("nncf", "convert", what="OpenVINO int8") from exc
        details["nncf"] = nncf.__version__
        if how == "compress_weights":
            details["mode"] = nncf.CompressWeightsMode.INT8_ASYM.value
            run, kwargs = nncf.compress_weights, {"mode": nncf.CompressWeightsMode.INT8_ASYM}
        else:
            dataset, size = _calibration_dataset(inputs, nncf)
            # MIXED (symmetric weights, asymmetric activations) is what NNCF picks for TRANSFORMER;
            # spelled out so the manifest records it. TRANSFORMER also applies SmoothQuant and leaves
            # the ops int8 hurts in transformers (softmax, norms, ...) in float.
            details.update(mode="static", preset="mixed", model_type="transformer", subset_size=size)
            run = nncf.quantize
            kwargs = {
                "calibration_dataset": dataset,
                "preset": nncf.QuantizationPreset.MIXED,
                "model_type": nncf.ModelType.TRANSFORMER,
                "subset_size": size,
            }
        try:
            return run(model, **kwargs)
        except Exception as exc:  # nncf raises its own InternalError/ValidationError and OpenVINO's
            raise ConversionError(f"NNCF {how} failed: {exc}") from exc
