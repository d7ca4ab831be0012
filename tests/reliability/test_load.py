"""Load (issue 13, point 7): 64 concurrent clients for 30 s against `edgekit serve` with a cloud
behind it (another `edgekit serve` on the same bundle): no errors other than the documented
overload answer, p50/p99 recorded, resident memory growth under 10% from the first 10 s to the
last. The longer run is benchmarks/soak.py (a benchmark, not a test).

How it was checked to fail: a server that leaks (100 kB kept per request in
DataPlane.classify) fails the memory bound.
"""

from __future__ import annotations

import json

import pytest

from edgekit.bench.soak import edge_with_cloud, format_soak_markdown, run_soak
from edgekit.data import load_dataset

pytestmark = pytest.mark.e2e


def test_64_clients_for_30_s_with_a_cloud_behind(converted, small_splits, tmp_path):
    bundle = next(b for b in converted.bundles if b.name == "onnx-int8")
    texts = list(load_dataset(small_splits["test"]).texts)
    with edge_with_cloud(bundle) as edge:
        result = run_soak(edge.address, texts, clients=64, seconds=30, pid=edge.proc.pid, window_s=10)
    print(format_soak_markdown(result))  # shown with -s; the figures go to README from benchmarks/soak.py
    (tmp_path / "load.json").write_text(json.dumps(result))
    assert result["errors"] == {}, result["codes"]
    answered = result["codes"].get("OK", 0)
    assert answered >= 0.9 * result["requests"] and answered > 1000
    assert result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"]
    assert result["rss_growth"] is not None and result["rss_growth"] < 0.10, result["windows"]
