"""What machine this is: CPU model and the ISA features that decide int8 speed, cores, memory,
OS, Raspberry Pi model. Recorded in bundle manifests and benchmark results."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["device_record", "library_versions", "parse_cpuinfo"]

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


# ARM /proc/cpuinfo has no model name, only the implementer:part code (Arm Ltd = 0x41).
_ARM_PARTS = {
    "0xd03": "Cortex-A53 (Raspberry Pi 3)",
    "0xd08": "Cortex-A72 (Raspberry Pi 4)",
    "0xd0b": "Cortex-A76 (Raspberry Pi 5)",
    "0xd05": "Cortex-A55",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd4f": "Neoverse-V2",
}


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), set()
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(CPU model, feature flags) from the text of /proc/cpuinfo."""
    model, flags, part, named = platform.processor() or platform.machine(), set(), None, False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model, named = value.strip(), True
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "cpu part" and part is None:
            part = value.strip().lower()
    if not named and part:
        model = f"Arm {_ARM_PARTS.get(part, f'CPU part {part}')}"
    return model, flags


def library_versions() -> dict[str, str]:
    out = {}
    from edgekit.registry import ENGINES

    # the engines registered in this process (the runtime loaded them) name their own packages
    engines = [d for name in ENGINES for d in ENGINES.get(name).distributions]
    for name in dict.fromkeys([*_LIBRARIES, *engines]):
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
    if os.environ.get("QEMU_CPU"):  # under qemu-user (benchmarks/raspberry-pi): timings mean nothing
        record["emulated"] = f"qemu-user, QEMU_CPU={os.environ['QEMU_CPU']}"
    record["fast_int8"] = bool({"avx512_vnni", "avx_vnni", "amx_int8", "dotprod"} & set(record["features"]))
    return record
