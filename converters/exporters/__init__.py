"""Exporters per format behind one registry (see :mod:`.base`)."""

from __future__ import annotations

import importlib

from edgekit.converters.exporters.base import EXPORTERS, Exporter

__all__ = ["EXPORTERS", "get_exporter"]


def _lazy(module: str, cls: str):
    def factory() -> Exporter:
        return getattr(importlib.import_module(f"edgekit.converters.exporters.{module}"), cls)()

    return factory


EXPORTERS.add("onnx", _lazy("onnx", "OnnxExporter"))
EXPORTERS.add("openvino", _lazy("openvino", "OpenVinoExporter"), aliases=("ov", "openvino-ir"))
EXPORTERS.add("tflite", _lazy("tflite", "TfliteExporter"), aliases=("litert",))


def get_exporter(name: str) -> Exporter:
    return EXPORTERS.get(name)()
