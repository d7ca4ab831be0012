"""``edgekit serve --engine-cpus LIST``: the engine thread on those CPUs, every other thread of the
server on the rest, and the answers unchanged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import needs

pytestmark = [
    needs("torch", "transformers", "onnxruntime", "grpc", "prometheus_client"),
    pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                       reason="needs Linux and at least 2 CPUs available to this process"),
]


def _affinities(pid: int) -> dict[int, tuple[str, frozenset[int]]]:
    """Each thread of ``pid``: its name and its CPUs (Cpus_allowed_list in /proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status, name = (task / "status").read_text(), (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        text = re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M).group(1)
        cpus = set()
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
        out[int(task.name)] = (name, frozenset(cpus))
    return out


def test_the_engine_runs_on_its_cpus_and_the_rest_of_the_server_elsewhere(converted, small_splits):
    from edgekit.data import load_dataset
    from edgekit.runtime.client import EdgeClient
    from edgekit.runtime.model import load_bundle_model

    allowed = frozenset(os.sched_getaffinity(0))
    engine = frozenset({max(allowed)})
    bundle = next(b for b in converted.bundles if b.name == "onnx-int8")
    texts = list(load_dataset(small_splits["test"]).texts)[:64]
    model = load_bundle_model(bundle)
    try:
        expected = [model.info.labels[int(row.argmax())] for row in model.logits(texts)]
    finally:
        model.close()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0",
                             "--engine-cpus", str(max(allowed)), "--no-drift"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        serving = proc.stdout.readline()
        address = re.search(r" on (\S+:\d+)$", serving.strip())
        assert address, serving
        with ThreadPoolExecutor(16) as pool:  # concurrent callers: requests queue, the engine thread runs them

            def ask(text: str) -> str:
                with EdgeClient(address.group(1), timeout_s=30) as client:
                    return client.classify([text], allow_cloud=False)[0].label

            answers = list(pool.map(ask, texts * 4))
        assert answers == expected * 4
        threads = _affinities(proc.pid)
        assert threads[proc.pid][1] == allowed - engine  # the main thread, and the threads it started
        # the micro-batcher's engine thread, and threads the engine started while it loaded
        assert any(cpus == engine for _, cpus in threads.values()), threads
        # the gRPC server's threads (named by gRPC's C core) all run on the rest
        grpc_threads = [cpus for name, cpus in threads.values() if name != "python"]
        assert grpc_threads and all(cpus == allowed - engine for cpus in grpc_threads), threads
    finally:
        proc.terminate()
        proc.wait(30)
