"""Inference engines behind one protocol (:mod:`.base`). Each module is imported only when its
backend is asked for, so a device needs just the engine it uses."""

from __future__ import annotations

import importlib
from pathlib import Path

from edgekit.manifest import Manifest
from edgekit.runtime.backends.base import BACKENDS, Backend

__all__ = ["FORMAT_BACKENDS", "load_backend", "resolve_backend"]

# format -> backends that can run it, the first being the default ("auto")
FORMAT_BACKENDS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
    "tflite": ("tflite",),
}


def _lazy(module: str):
    def factory(bundle_dir: Path, manifest: Manifest, *, threads: int | None = None) -> Backend:
        return importlib.import_module(f"edgekit.runtime.backends.{module}").load(bundle_dir, manifest, threads=threads)

    return factory


BACKENDS.add("onnxruntime", _lazy("onnxruntime"), aliases=("ort", "onnx-runtime"))
BACKENDS.add("openvino", _lazy("openvino"), aliases=("ov",))
BACKENDS.add("tflite", _lazy("tflite"), aliases=("litert", "tflite-runtime", "ai-edge-litert"))


def resolve_backend(manifest: Manifest, backend: str = "auto") -> str:
    from edgekit.errors import ConfigError

    able = FORMAT_BACKENDS.get(manifest.format)
    if able is None:
        raise ConfigError(f"no backend runs the bundle format {manifest.format!r}")
    if backend == "auto":
        return able[0]
    name = BACKENDS.canonical(backend)
    if name not in able:
        raise ConfigError(f"backend {name!r} cannot run a {manifest.format} bundle (use: {', '.join(able)})")
    return name


def load_backend(bundle_dir: Path, manifest: Manifest, backend: str = "auto", *, threads: int | None = None) -> Backend:
    return BACKENDS.get(resolve_backend(manifest, backend))(bundle_dir, manifest, threads=threads)
