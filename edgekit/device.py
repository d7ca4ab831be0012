"""What machine this is: CPU model and the ISA features that decide int8 speed, cores, memory,
OS, Raspberry Pi model. Recorded in bundle manifests and benchmark results."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["device_record", "library_versions"]

# /proc/cpuinfo flag -> what we call it. x86 VNNI and ARM dot-product are what make int8 fast.
_FEATURES = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8",
    "asimd": "neon",
    "neon": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
}

_LIBRARIES = (
    "edgekit", "numpy", "onnxruntime", "openvino", "ai-edge-litert", "tflite-runtime", "tokenizers", "grpcio",
    "torch", "transformers", "optimum", "onnx", "nncf", "litert-torch", "ai-edge-quantizer",
)


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def device_record() -> dict[str, Any]:
    model, flags = _cpuinfo()
    record: dict[str, Any] = {
        "cpu": model,
        "arch": platform.machine(),
        "features": sorted({name for flag, name in _FEATURES.items() if flag in flags}),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        record["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    pi = Path("/proc/device-tree/model")
    if pi.is_file():
        record["board"] = pi.read_text(errors="replace").strip("\x00\n ")
    record["fast_int8"] = bool({"avx512_vnni", "avx_vnni", "amx_int8", "dotprod"} & set(record["features"]))
    return record
