"""OpenVINO backend (CPU plugin): runs an OpenVINO IR (``model.xml`` + ``model.bin``) or an ONNX file.

Inputs are matched by their name *sets*: an IR converted from torch may carry alias names
beside ``input_ids``/``attention_mask`` (NOTES.md), and an ONNX file has just the plain ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import ManifestError, MissingDependencyError
from edgekit.manifest import MODEL_INPUTS, Manifest
from edgekit.registry import ENGINES, EngineSpec

__all__ = ["ENGINE", "OpenVinoBackend", "load"]

ENGINE = ENGINES.add_spec(EngineSpec(
    # serves its own IR, and ONNX files too (after onnxruntime, the ONNX default)
    name="openvino", loader="edgekit.runtime.backends.openvino:load", formats=("openvino", "onnx"),
    requires=("openvino",), distributions=("openvino",), aliases=("ov",), priority=1,
))

INPUT_NAMES = MODEL_INPUTS
MODEL_SUFFIXES = (".xml", ".onnx")


# Same opening as OnnxRuntimeBackend on purpose: every engine module spells out the Backend
# attributes and imports its own library lazily with the install hint (one module per engine, same shape).
class OpenVinoBackend:
    name = "openvino"
    buckets: tuple[int, ...] = ()
    max_batch = 0
    rows_interact = False  # int8 here compresses weights; activations stay in float

    def __init__(self, model_path: Path, *, threads: int | None = None) -> None:
        try:
            import openvino as ov
            import openvino.properties as props
            import openvino.properties.hint as hints
        except ImportError as exc:
            raise MissingDependencyError("openvino", "runtime", what="the openvino backend") from exc
        config = {
            # One request at a time (BundleModel serialises calls): latency, not throughput streams.
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            # Keep the model's own precision: in PERFORMANCE mode the CPU plugin computes in bf16
            # on AMX/AVX512-BF16 Xeons and in f16 on ARMv8.2 cores (Raspberry Pi 5), so the device
            # would run something the accuracy gate never measured.
            hints.execution_mode: hints.ExecutionMode.ACCURACY,
        }
        if threads:
            config[props.inference_num_threads] = threads
        try:
            core = ov.Core()
            self._compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own Exception types
            raise ManifestError(f"{model_path}: OpenVINO cannot load the model ({exc})") from exc
        # model input index -> (our input name, the element type it wants)
        self._feed: dict[int, tuple[str, np.dtype]] = {}
        for index, port in enumerate(self._compiled.inputs):
            name = next((n for n in INPUT_NAMES if n in port.get_names()), None)
            if name is None:
                raise ManifestError(
                    f"{model_path}: model input {sorted(port.get_names())} is neither of {', '.join(INPUT_NAMES)}"
                )
            self._feed[index] = (name, port.get_element_type().to_dtype())
        self._request = self._compiled.create_infer_request()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
        feed = {index: np.ascontiguousarray(arrays[name], dtype=dtype) for index, (name, dtype) in self._feed.items()}
        result = self._request.infer(feed)  # copies the outputs (share_outputs=False)
        return np.asarray(result[0], dtype=np.float32)

    def close(self) -> None:
        self._request = None
        self._compiled = None


def load(bundle_dir: Path, manifest: Manifest, *, threads: int | None = None) -> OpenVinoBackend:
    """The bundle's ``.xml`` (its ``.bin`` is found beside it) or ``.onnx`` file."""
    files = manifest.model_files
    model_file = next((f for f in files if f.endswith(MODEL_SUFFIXES)), files[0])
    return OpenVinoBackend(Path(bundle_dir) / model_file, threads=threads)
