"""Cold start and peak memory of one artifact, measured in a fresh process.

``python -m edgekit.bench.probe [--threads N] [--max-length L] [--backend B] -- PATH TEXT`` prints one JSON
line: ``import_ms`` (edgekit's loader), ``load_ms`` (the engine's libraries and the model), ``first_ms`` (first answer),
``cold_start_ms`` (all three: what a kiosk waits after boot) and ``peak_rss_mb``
(the process's high-water mark, interpreter and libraries included: what the device must hold).
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

__all__ = ["probe"]


def _peak_rss_mb() -> float:
    # VmHWM is this address space's high-water mark. ru_maxrss is not usable on Linux here: it
    # survives execve, so a child forked from a big parent reports the parent's size.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgekit.bench.probe")
    parser.add_argument("path", type=Path)
    parser.add_argument("text")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from edgekit.runtime.model import load_model  # bundles and the teacher's directory (torch engine) alike

    imported = time.perf_counter()
    model = load_model(args.path, args.backend, threads=args.threads, max_length=args.max_length)
    loaded = time.perf_counter()
    model.logits([args.text])
    done = time.perf_counter()
    print(json.dumps({
        "import_ms": (imported - start) * 1000,
        "load_ms": (loaded - imported) * 1000,
        "first_ms": (done - loaded) * 1000,
        "cold_start_ms": (done - _T0) * 1000,
        "peak_rss_mb": _peak_rss_mb(),
    }))


def probe(path: Path, text: str, *, threads: int | None = None, max_length: int = 128,
          backend: str = "auto", timeout_s: float = 600.0) -> dict[str, float]:
    """Run the probe in a new interpreter (a bundle, or a model directory on the torch engine; ``backend``
    as ``load_model`` takes it); ``{}`` (with a warning logged) if it fails."""
    import logging

    cmd = [sys.executable, "-m", "edgekit.bench.probe", "--max-length", str(max_length), "--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += ["--", str(path), text]  # "--": a text may start with "-"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        logging.getLogger(__name__).warning("probe of %s timed out after %.0f s", path, timeout_s)
        return {}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        logging.getLogger(__name__).warning("probe of %s failed: %s", path, tail)
        return {}
    return json.loads(lines[-1])


if __name__ == "__main__":
    _main()
