"""benchmarks/engine_timeline.py: the busy share, gaps and batch sizes of a server's model calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_timeline.py"


def _module():
    spec = importlib.util.spec_from_file_location("benchmarks_engine_timeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_summary_reads_busy_share_gaps_and_where_calls_ran():
    # 2 s trimmed at the head, 1 s at the tail: calls from t = 3 s to 7 s, each 8 ms, 2 ms apart
    calls, t = [], 0.0
    while t < 10.0:
        calls.append((t, t + 0.008, 8 if int(t * 100) % 2 else 1, "edgekit-batcher" if t > 5 else "ThreadPool-1"))
        t += 0.010
    runs = [(start, start + 0.001) for start, *_ in calls]
    lines = _module()._summary(calls, runs)
    assert "busy 80.0%" in lines[0] or "busy 80.1%" in lines[0], lines
    assert "on the engine thread" in lines[0] and "on the caller's thread" in lines[0]
    assert lines[1].startswith("batch sizes: 1: ") and ", 8: " in lines[1]
    assert "p50 2.000" in lines[2] and ("20.0% of the time" in lines[2] or "19.9% of the time" in lines[2]), lines[2]
    assert "onnxruntime run, ms: p50 1.000" in lines[3] and "busy 10.0%" in lines[3], lines[3]


def test_too_few_calls_say_so():
    assert _module()._summary([(0.0, 0.1, 1, "x"), (0.2, 0.3, 1, "x")], []) == [
        "too few model calls in the middle of the run"]
