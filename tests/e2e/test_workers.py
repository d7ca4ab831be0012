"""``edgekit serve --workers N``: N processes on one port, one /metrics summing them, one SIGTERM stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from edgekit.errors import ConfigError
from edgekit.runtime.workers import threads_per_worker
from tests.conftest import needs


def test_threads_per_worker_never_oversubscribes_the_cores():
    assert threads_per_worker(2, None, cores=8) == 4
    assert threads_per_worker(3, None, cores=2) == 1
    assert threads_per_worker(2, 2, cores=4) == 2
    with pytest.raises(ConfigError, match="fight for the CPU"):
        threads_per_worker(2, 3, cores=4)


def _metric(body: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", body, re.M))


@needs("torch", "transformers", "onnxruntime", "grpc", "prometheus_client")
def test_two_workers_share_the_port_and_their_metrics_are_summed(converted):
    from edgekit.runtime.client import EdgeClient

    bundle = next(b for b in converted.bundles if b.name == "onnx-fp32")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0", "--metrics-port", "0",
         "--workers", "2", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        serving = proc.stdout.readline()
        match = re.search(r" on ([\d.]+):(\d+) \(2 workers, pids (\d+), (\d+)\)", serving)
        assert match, serving
        address, pids = f"{match.group(1)}:{match.group(2)}", {int(match.group(3)), int(match.group(4))}
        metrics_url = re.search(r"(http://\S+/metrics)", proc.stdout.readline()).group(1)
        for _ in range(12):  # a new connection each time: the kernel spreads them over the workers
            with EdgeClient(address, timeout_s=30) as client:
                client.classify(["where is my order"], allow_cloud=False)
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            body = response.read().decode()
        assert _metric(body, "edgekit_requests_total") == 12  # one count per request, over both workers
        assert _metric(body, "edgekit_batch_size_count") == 12
        assert _metric(body, "edgekit_model_busy_seconds_total") > 0  # summed over both workers
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in pids), "a worker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
