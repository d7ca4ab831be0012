"""The bench's arithmetic and verdict on synthetic rows: no model, no engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _row(artifact, kind, accuracy, p50, size, cascade_10=None):
    return {"artifact": artifact, "kind": kind, "threads": 1, "batch": 1, "accuracy": accuracy,
            "latency_ms_p50": p50, "size_bytes": size, "cascade_accuracy_at_10pct_cloud": cascade_10}


def test_latency_sample_spreads_over_a_label_sorted_file():
    from edgekit.bench.suite import latency_sample

    texts = [f"label{i // 40} text {i}" for i in range(3080)]  # sorted by label, like banking77's test file
    sample = latency_sample(texts, 200)
    assert len(sample) == 200 == len(set(sample))
    assert len({t.split()[0] for t in sample}) == 77  # every label, not the first 5
    assert latency_sample(texts[:10], 200) == texts[:10]


def test_throughput_counts_the_texts_timed_not_full_batches():
    """200 texts at batch 64 are 4 calls of 64, 64, 64 and 8 texts: 200 texts, not 256."""
    from edgekit.bench.subjects import Subject
    from edgekit.bench.suite import _Measured, _row

    subject = Subject(artifact="a", kind="teacher", format="torch", precision="fp32", path=Path("."),
                      size_bytes=1, load=lambda threads: None, labels=["x"])
    m = _Measured(subject, np.zeros(1, int), np.ones((1, 1)), metrics={"accuracy": 1.0, "macro_f1": 1.0, "ece": 0.0})
    row = _row(m, 1, 64, [100.0, 100.0, 100.0, 100.0], n_texts=200)
    assert row["throughput_per_s"] == pytest.approx(200 / 0.4)
    assert row["calls"] == 4


def test_verdict_on_a_strong_teacher():
    from edgekit.bench.report import _markdown, targets

    rows = [_row("teacher", "teacher", 0.95, 90.0, 438e6), _row("optimum-baseline", "optimum-baseline", 0.94, 22.0, 110e6),
            _row("onnx-int8", "edgekit", 0.942, 2.0, 7e6, 0.948), _row("onnx-fp32", "edgekit", 0.945, 3.0, 27e6, 0.949)]
    v = targets({"rows": rows})
    assert v["best"] == "onnx-int8"  # the fastest within 1 point
    assert v["speedup_vs_teacher"] == pytest.approx(45.0) and v["speedup_vs_baseline"] == pytest.approx(11.0)
    assert v["accuracy_drop_points"] == pytest.approx(0.8)
    assert v["cascade_drop_points_at_10pct_cloud"] == pytest.approx(0.2)
    assert v["cascade_gain_points_at_10pct_cloud"] == pytest.approx(0.6)
    assert all(v["met"].values())
    assert v["teacher_below_best_edge_points"] == 0.0
    device = {"cpu": "x", "arch": "x86_64", "cores": 2, "memory_gib": 1, "features": [], "os": "Linux", "python": "3"}
    md = _markdown({"rows": [], "device": device, "date": "d", "test": {"path": "t", "texts": 1, "latency_texts": 1}}, v, [])
    assert "less accurate than the best edge bundle" not in md


def test_verdict_says_when_the_teacher_is_the_weaker_model():
    from edgekit.bench.report import _markdown, drop_words, targets

    rows = [_row("teacher", "teacher", 0.90, 90.0, 438e6), _row("onnx-int8", "edgekit", 0.93, 2.0, 7e6, 0.925)]
    v = targets({"rows": rows})
    assert v["accuracy_drop_points"] == pytest.approx(-3.0)
    assert v["teacher_below_best_edge_points"] == pytest.approx(3.0)
    assert v["cascade_gain_points_at_10pct_cloud"] == pytest.approx(-0.5)  # sending texts to a weaker teacher costs
    assert drop_words(v["accuracy_drop_points"]) == "3.00 points above"
    assert drop_words(0.44) == "0.44 points below"
    device = {"cpu": "x", "arch": "x86_64", "cores": 2, "memory_gib": 1, "features": [], "os": "Linux", "python": "3"}
    md = _markdown({"rows": [], "device": device, "date": "d", "test": {"path": "t", "texts": 1, "latency_texts": 1}}, v, [])
    assert "3.00 points less accurate than the best edge bundle" in md and "by -0.50 points" in md


def test_verdict_when_nothing_passes_and_the_baseline_is_broken():
    """banking77 run of 2026-12-02: every bundle 1.3-1.5 points below the teacher; the verdict named
    onnx-fp32 (most accurate, 5.2 ms) instead of tflite-int8 (as accurate, 1.6 ms), and scored a
    speed-up against an Optimum baseline that answered at chance."""
    from edgekit.bench.report import _markdown, targets

    rows = [_row("teacher", "teacher", 0.9471, 71.3, 438e6), _row("optimum-baseline", "optimum-baseline", 0.013, 16.1, 110e6),
            _row("onnx-fp32", "edgekit", 0.9341, 5.16, 50e6, 0.9464), _row("tflite-int8", "edgekit", 0.9341, 1.63, 14e6, 0.9468),
            _row("onnx-int8", "edgekit", 0.9338, 2.57, 13e6, 0.9471), _row("openvino-int8", "edgekit", 0.9290, 1.0, 13e6, 0.94)]
    v = targets({"rows": rows})
    assert v["best"] == "tflite-int8"  # the fastest within 0.3 points of the most accurate, not openvino's 0.929
    assert v["met"]["speedup_vs_baseline"] is None and not v["baseline_valid"]
    device = {"cpu": "x", "arch": "x86_64", "cores": 2, "memory_gib": 1, "features": [], "os": "Linux", "python": "3"}
    md = _markdown({"rows": [], "device": device, "date": "d", "test": {"path": "t", "texts": 1, "latency_texts": 1}}, v, [])
    assert "the baseline is invalid" in md
