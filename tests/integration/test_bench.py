"""edgekit bench on the tiny bundles the converter made (session fixture `converted`), with the
tiny teacher and an Optimum baseline built from it: rows, figures that must agree with the
converter's own evaluation, files, and the runtime-only path with a reference file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import needs

pytestmark = needs("torch", "transformers", "optimum", "onnxruntime", "openvino", "ai_edge_litert")

ROW_KEYS = ("artifact", "kind", "format", "precision", "size_bytes", "accuracy", "threads", "batch",
            "latency_ms_p50", "latency_ms_p99", "latency_ms_p50_after_switch")


@pytest.fixture(scope="module")
def benched(tmp_path_factory, converted, tiny_classifier, small_splits):
    from edgekit.bench.report import write_results
    from edgekit.bench.suite import BenchConfig, run_bench

    out = tmp_path_factory.mktemp("bench")
    config = BenchConfig(bundles=converted.out, test=small_splits["test"], out=out, teacher=tiny_classifier,
                         threads=(1, 2), batch=(1, 4), latency_texts=12, warmup=2, progress=False)
    result = run_bench(config, echo=lambda s: None)
    write_results(result, out)
    return out, json.loads((out / "results.json").read_text())


def test_rows_cover_every_artifact_thread_and_batch(benched, converted):
    out, result = benched
    rows = result["rows"]
    kinds = {r["artifact"]: r["kind"] for r in rows}
    assert kinds == {"teacher": "teacher", "optimum-baseline": "optimum-baseline",
                     **{b.name: "edgekit" for b in converted.bundles}}
    assert {(r["threads"], r["batch"]) for r in rows} == {(1, 1), (1, 4), (2, 1), (2, 4)}
    assert len(rows) == 4 * len(kinds)
    for r in rows:
        for key in ROW_KEYS:
            assert r[key] is not None, (r["artifact"], key)
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"]
        assert r["calls"] == (12 if r["batch"] == 1 else 3)
        assert r["cold_start_ms"] > 0 and r["peak_rss_mb"] > 10
        if r["kind"] == "edgekit":
            assert 0 <= r["cloud_rate"] <= 1 and r["cascade_accuracy"] is not None
            assert r["cloud_calls_per_1000"] == pytest.approx(1000 * r["cloud_rate"])
            assert r["cloud_rate_at_10pct_budget"] <= 0.10 + 1e-9
    device = result["device"]
    assert device["arch"] and device["cores"] and "features" in device and device["libraries"]["onnxruntime"]


def test_figures_agree_with_the_converters_evaluation(benched, converted):
    """Same test file, same bundles: the bench must reproduce convert's accuracy and cascade figures."""
    from edgekit.manifest import Manifest

    _, result = benched
    first = {r["artifact"]: r for r in result["rows"] if r["threads"] == 1 and r["batch"] == 1}
    report = {r["artifact"]: r for r in json.loads((converted.out / "report.json").read_text())["rows"]}
    assert first["teacher"]["accuracy"] == pytest.approx(report["teacher"]["accuracy"], abs=1e-9)
    assert first["teacher"]["agreement"] == 1.0
    for bundle in converted.bundles:
        m = Manifest.load(bundle).metrics
        row = first[bundle.name]
        assert row["accuracy"] == pytest.approx(m["accuracy"], abs=1e-9), bundle.name
        assert row["agreement"] == pytest.approx(m["agreement"], abs=1e-9), bundle.name
        assert row["cloud_rate"] == pytest.approx(m["cloud_rate"], abs=1e-9), bundle.name
        assert row["cascade_accuracy"] == pytest.approx(m["cascade_accuracy"], abs=1e-9), bundle.name
    # the baseline is the teacher quantized without distillation: smaller than the teacher, close to it
    assert first["optimum-baseline"]["size_bytes"] < first["teacher"]["size_bytes"]
    assert first["optimum-baseline"]["agreement"] >= 0.8


def test_files_and_targets(benched):
    out, result = benched
    assert (out / "results.md").is_file() and (out / "latency_vs_accuracy.png").is_file()
    assert (out / "cascade.png").is_file() and (out / "reference.json").is_file()
    assert (out / "optimum-baseline" / "manifest.json").is_file()
    md = (out / "results.md").read_text()
    assert "| optimum-baseline |" in md and "## Targets" in md
    verdict = result["targets"]
    assert verdict["best"] in {r["artifact"] for r in result["rows"] if r["kind"] == "edgekit"}
    assert set(verdict["met"]) == {"speedup_vs_teacher", "speedup_vs_baseline", "size_fraction_of_teacher",
                                   "max_accuracy_drop_points", "max_cascade_drop_points_at_10pct_cloud"}


def test_reference_gives_agreement_and_cascade_without_the_teacher(benched, converted, small_splits, tmp_path):
    """What a Raspberry Pi run does: no torch, the teacher's answers come from the x86 run's reference.json."""
    from edgekit.bench.suite import BenchConfig, run_bench

    out, first = benched
    bundle = converted.out / "onnx-int8"
    result = run_bench(BenchConfig(bundles=bundle, test=small_splits["test"], out=tmp_path, reference=out / "reference.json",
                                   latency_texts=4, warmup=1, probe=False, progress=False), echo=lambda s: None)
    assert [r["artifact"] for r in result["rows"]] == ["onnx-int8"]
    row, before = result["rows"][0], next(r for r in first["rows"] if r["artifact"] == "onnx-int8")
    for key in ("accuracy", "agreement", "cloud_rate", "cascade_accuracy"):
        assert row[key] == pytest.approx(before[key], abs=1e-9), key
    assert row["cold_start_ms"] is None  # --no-probe


def test_reference_from_another_test_file_is_refused(benched, converted, small_splits, tmp_path):
    from edgekit.bench.suite import BenchConfig, run_bench
    from edgekit.errors import DataError

    out, _ = benched
    other = tmp_path / "other.jsonl"
    other.write_text(small_splits["test"].read_text().split("\n", 1)[1])
    with pytest.raises(DataError, match="another test file"):
        run_bench(BenchConfig(bundles=converted.out / "onnx-int8", test=other, out=tmp_path / "o",
                              reference=out / "reference.json", probe=False, progress=False), echo=lambda s: None)


def test_reference_of_another_model_is_refused(benched, converted, small_splits, tmp_path):
    from edgekit.bench.suite import BenchConfig, run_bench
    from edgekit.errors import DataError

    out, _ = benched
    ref = json.loads((out / "reference.json").read_text())
    ref["teacher_labels"][0] = "no_such_intent"
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    with pytest.raises(DataError, match="no_such_intent"):
        run_bench(BenchConfig(bundles=converted.out / "onnx-int8", test=small_splits["test"], out=tmp_path / "o",
                              reference=tmp_path / "ref.json", probe=False, progress=False), echo=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_probe_takes_any_text_and_the_backend(converted):
    """A first test text starting with '-' once made the probe's argument parser fail (empty columns)."""
    from edgekit.bench.probe import probe

    got = probe(converted.out / "onnx-fp32", "-5 euros refund?", threads=1, max_length=32, backend="openvino")
    assert got["cold_start_ms"] > 0 and got["peak_rss_mb"] > 10
    assert probe(converted.out / "onnx-fp32", "hello", backend="tflite") == {}  # cannot run ONNX: failure, logged


def test_cli_runs_and_refuses_bad_input(converted, small_splits, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    runner = CliRunner()
    ok = runner.invoke(cli, ["bench", str(converted.out / "tflite-int8"), "--test", str(small_splits["test"]),
                             "--out", str(tmp_path / "r"), "--latency-texts", "4", "--no-probe", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "tflite-int8" in ok.output and (tmp_path / "r" / "results.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    cases = ((converted.out, ["--threads", "0"], "--threads"), (empty, [], "holds no bundle"),
             (converted.out / "onnx-int8", ["--out", str(a_file / "r")], "cannot create the results directory"))
    for target, args, message in cases:
        done = subprocess.run([sys.executable, "-m", "edgekit", "bench", str(target), "--test", str(small_splits["test"]),
                               "--out", str(tmp_path / "x"), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert done.stderr.startswith("Error: ") and message in done.stderr.splitlines()[0], done.stderr
    assert not (tmp_path / "x").exists()
