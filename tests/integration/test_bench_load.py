"""The server load benchmark on a real ONNX bundle exported from the tiny classifier: every mode
answers every request, the script prints the table and writes load.json, bad input is refused."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from edgekit.bench.load import MODES, LoadConfig, format_load_markdown, run_load
from edgekit.errors import ConfigError
from tests.conftest import REPO, needs

SCRIPT = REPO / "benchmarks" / "load.py"
NEEDS_EXPORT = needs("torch", "transformers", "onnxruntime", "onnx")
ROW_KEYS = {"mode", "clients", "requests", "errors", "elapsed_s", "throughput_rps", "latency_ms_p50",
            "latency_ms_p99", "latency_ms_mean", "mean_batch_size", "max_batch_size", "max_wait_ms", "first_error"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_classifier, tiny_export_inputs):
    """A real ONNX fp32 bundle of the tiny classifier, made as the convert pipeline makes each
    candidate (export, tokenizer.json, manifest with checksums) without distillation and
    calibration, which the load benchmark does not look at: seconds instead of a minute."""
    from edgekit.converters.exporters import get_exporter
    from edgekit.manifest import Manifest

    art = get_exporter("onnx").export(tiny_export_inputs, "fp32", tmp_path_factory.mktemp("load-bundle") / "onnx-fp32")
    shutil.copy(tiny_classifier / "tokenizer.json", art.directory / "tokenizer.json")
    id2label = json.loads((tiny_classifier / "config.json").read_text())["id2label"]
    labels = [id2label[str(i)] for i in range(len(id2label))]
    Manifest(format="onnx", precision=art.precision, labels=labels, model_files=art.model_files,
             max_length=tiny_export_inputs.max_length, name="tiny-onnx-fp32").save(art.directory)
    return art.directory


@pytest.fixture(scope="module")
def texts(small_splits):
    from edgekit.data import load_dataset

    return list(load_dataset(small_splits["test"]).texts[:20])


@NEEDS_EXPORT
def test_every_mode_answers_every_request(bundle, texts):
    config = LoadConfig(clients=3, seconds=0.5, max_batch_size=4, max_wait_ms=5, progress=False)
    result = run_load(bundle, texts, config)
    json.dumps(result, allow_nan=False)  # JSON-able as it is

    assert (result["clients"], result["seconds"], result["texts"]) == (3, 0.5, len(texts))
    assert result["batching"] == {"max_batch_size": 4, "max_wait_ms": 5}
    assert result["bundle"]["format"] == "onnx" and result["bundle"]["backend"] == "onnxruntime"
    assert result["device"]["cores"]
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == list(MODES)
    for mode, row in rows.items():
        assert set(row) == ROW_KEYS, mode
        assert row["requests"] > 0 and row["errors"] == 0 and row["first_error"] is None, row
        assert row["throughput_rps"] > 0 and row["elapsed_s"] >= 0.5, row
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"], row
    assert rows["raw-backend"]["clients"] == 1 and rows["server-micro-batching"]["clients"] == 3
    assert rows["server-no-batching"]["mean_batch_size"] == 1.0
    assert 1.0 <= rows["server-micro-batching"]["mean_batch_size"] <= 4
    assert rows["raw-backend"]["mean_batch_size"] is None
    raw = rows["raw-backend"]["throughput_rps"]
    assert set(result["ratios"]) == set(MODES[1:])
    for mode, ratio in result["ratios"].items():
        assert ratio == pytest.approx(rows[mode]["throughput_rps"] / raw, abs=1e-3)

    table = format_load_markdown(result)
    assert table.count("\n| ") == 1 + len(MODES)  # header + one line per mode
    for mode in MODES:
        assert f"| {mode} | " in table


@NEEDS_EXPORT
def test_one_client_has_no_concurrent_raw_row(bundle, texts):
    result = run_load(bundle, texts[:2], LoadConfig(clients=1, seconds=0.3, progress=False))
    assert [row["mode"] for row in result["rows"]] == ["raw-backend", "server-no-batching", "server-micro-batching"]
    assert all(row["requests"] > 0 and row["errors"] == 0 for row in result["rows"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": 0}, "clients must be a whole number >= 1"),
        ({"clients": 2.5}, "clients must be a whole number >= 1"),
        ({"seconds": 0}, "seconds must be a finite number > 0"),
        ({"seconds": -1.0}, "seconds must be a finite number > 0"),
        ({"seconds": math.inf}, "seconds must be a finite number > 0"),
        ({"texts": []}, "texts is empty"),
        ({"texts": "where is my order"}, "a single string"),
        ({"texts": ["ok", "  "]}, r"texts\[1\] is '  '"),
        ({"max_batch_size": 1}, "max_batch_size must be >= 2"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a finite number >= 0"),
        ({"max_wait_ms": math.nan}, "max_wait_ms must be a finite number >= 0"),
    ],
)
def test_bad_arguments_are_refused_before_loading(tmp_path, kwargs, message):
    texts = kwargs.pop("texts", ["where is my order"])
    with pytest.raises(ConfigError, match=message):
        run_load(tmp_path / "no-bundle", texts, LoadConfig(progress=False, **kwargs))  # no bundle there: never reached


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.e2e
def test_script_help_and_bad_input(tmp_path, small_splits):
    done = _script("--help")
    assert done.returncode == 0 and "--max-wait-ms" in done.stdout and "--clients" in done.stdout

    done = _script(str(tmp_path), "--test", str(small_splits["test"]), "--seconds", "0.1", "--no-progress")
    assert done.returncode == 8, done.stderr  # ManifestError
    assert done.stderr.startswith(f"Error: {tmp_path} is not a bundle") and "Traceback" not in done.stderr

    done = _script(str(tmp_path), "--test", str(tmp_path / "missing.jsonl"))
    assert (done.returncode, done.stderr.strip()) == (3, f"Error: {tmp_path / 'missing.jsonl'}: no such file")


@pytest.mark.e2e
@NEEDS_EXPORT
def test_script_prints_the_table_and_writes_the_results(bundle, small_splits, tmp_path):
    out = tmp_path / "out"
    done = _script(str(bundle), "--test", str(small_splits["test"]), "--clients", "2", "--seconds", "0.3",
                   "--max-batch-size", "4", "--no-progress", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| server-micro-batching | 2 |" in done.stdout
    result = json.loads((out / "load.json").read_text())
    assert [row["mode"] for row in result["rows"]] == list(MODES)
    assert all(row["requests"] > 0 and row["errors"] == 0 for row in result["rows"])
    assert (out / "load.md").read_text() == done.stdout


@NEEDS_EXPORT
def test_the_overhead_benchmark_measures_every_subject_and_every_mode(bundle, texts, monkeypatch):
    """benchmarks/server_overhead.py's run, shrunk: real server processes, the echo and the bare
    model and data plane servers beside them, the overhead against model + echo, and throughput per
    mode, each cell in slices alternating with the in-process reference."""
    from edgekit.bench import overhead
    from edgekit.bench.overhead import SERVER_MODES, format_overhead_markdown, run_overhead

    monkeypatch.setattr(overhead, "_SLICE_S", 0.1)  # 0.3-s cells: three slices each

    result = run_overhead(bundle, texts, clients=(1, 2), seconds=0.3, rounds=10, compare={"here": sys.executable},
                          blocks=2)
    single = result["single_client"]
    modes = [*SERVER_MODES, "default@here"]  # another install's default server, side by side (here: this one)
    assert list(single) == ["in-process", "grpc-echo", "bare-model", "fused-minimum", "bare-dataplane", *modes]
    floor = single["in-process"]["p50_ms"] + single["grpc-echo"]["p50_ms"]
    for name in ("bare-model", "fused-minimum", "bare-dataplane", *modes):
        assert 0 < single[name]["p50_ms"] <= single[name]["p99_ms"]
        assert single[name]["overhead_ms"] == pytest.approx(single[name]["p50_ms"] - floor, abs=2e-3)
    assert {(row["mode"], row["clients"]) for row in result["load"]} == {(mode, n) for mode in modes for n in (1, 2)}
    for row in result["load"]:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["mean_batch"] >= 1 and row["slices"] == 3 and row["in_process_rps_at_batch"] > 0
        assert 0 < row["model_busy"] <= 1.05 and row["server_cpu_s"] > 0, row  # 1.05: two reads, two clocks
    blocks = result["single_client_blocks"]  # the one-client measurement twice, each block's overheads
    servers = ("bare-model", "fused-minimum", "bare-dataplane", *modes)
    assert len(blocks) == 2 and blocks[0] == {name: single[name]["overhead_ms"] for name in servers}
    assert list(blocks[1]) == list(blocks[0])
    steal = result["single_client_steal_pct"]  # per block: is the host idle? (None off Linux)
    assert len(steal) == 2 and all(s is None or 0 <= s <= 100 for s in steal)
    table = format_overhead_markdown(result)
    assert all(f"| {name} |" in table for name in ("bare-model", "fused-minimum", "bare-dataplane"))
    assert "| default | 2 |" in table
    assert "Overhead ms in each of 2 blocks" in table and "| median |" in table and "host steal %" in table
    assert "| default@here | 2 |" in table


@NEEDS_EXPORT
def test_the_overhead_benchmark_can_measure_issue_12s_three_subjects_alone(bundle, texts):
    """``--modes default --references none``: in-process, echo and the default server, nothing else
    between a server's calls."""
    from edgekit.bench.overhead import run_overhead

    result = run_overhead(bundle, texts, clients=(), rounds=10, modes=["default"], references=[])
    single = result["single_client"]
    assert list(single) == ["in-process", "grpc-echo", "default"] and result["load"] == []
    floor = single["in-process"]["p50_ms"] + single["grpc-echo"]["p50_ms"]
    assert single["default"]["overhead_ms"] == pytest.approx(single["default"]["p50_ms"] - floor, abs=2e-3)


@NEEDS_EXPORT
def test_the_request_path_benchmark_times_every_layer(bundle, texts):
    """benchmarks/request_path.py's run, shrunk: every layer answered and timed, the table written."""
    from edgekit.bench.request_path import format_request_path_markdown, run_request_path

    result = run_request_path(bundle, texts, rounds=10)
    rows = {row["subject"]: row for row in result["rows"]}
    assert list(rows) == ["model", "bare answer", "fused minimum", "+ calibration, top-k", "cascade, no batcher", "cascade",
                          "data plane", "servicer", "bookkeeping"]
    assert all(row["p50_ms"] > 0 for row in rows.values())
    assert rows["model"]["over_model_us"] is None and rows["bookkeeping"]["over_model_us"] is None
    assert all(isinstance(row["over_model_us"], float) for name, row in rows.items()
               if name not in ("model", "bookkeeping"))
    table = format_request_path_markdown(result)
    assert "| servicer |" in table and "| bookkeeping |" in table


@NEEDS_EXPORT
def test_the_request_layers_benchmark_times_each_layer_inside_the_servers(bundle, small_splits, tmp_path):
    """benchmarks/request_layers.py, shrunk: real servers with the layer hooks, every call's layers
    nested (own time within the layer's time), edgekit's layers absent from the bare server."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "request_layers.py"), str(bundle),
                           "--test", str(small_splits["test"]), "--rounds", "10", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert list(result["client_p50_ms"]) == ["in-process", "grpc-echo", "bare-model", "fused-minimum", "edgekit serve"]
    layers = {row["layer"]: row for row in result["layers"]}
    # each server's outermost layer first: edgekit's fast lane, grpcio's worker running a call (bare servers)
    for server, root in (("edgekit serve", "lane: runs the call"), ("bare-model", "grpc: worker runs the call"),
                         ("fused-minimum", "grpc: worker runs the call")):
        assert next(row["layer"] for row in result["layers"] if row[server] is not None) == root, server
    for name in ("lane: runs the call", "servicer: Classify", "data plane: classify",
                 "cascade: classify", "batcher: submit", "model: tokenize", "model: run", "onnxruntime: run"):
        assert layers[name]["edgekit serve"] is not None, name
    assert layers["grpc: handler call"]["edgekit serve"] is None  # a lone Classify never enters grpcio's pool path
    assert layers["servicer: Classify"]["bare-model"] is None and layers["model: logits"]["bare-model"] is not None
    assert layers["lane: runs the call"]["bare-model"] is None and layers["grpc: handler call"]["bare-model"]
    fused = {name for name, row in layers.items() if row["fused-minimum"] is not None}
    assert "data plane: validate" in fused and "cascade: classify" not in fused
    for row in result["layers"]:
        for figures in (row["edgekit serve"], row["bare-model"], row["fused-minimum"]):
            if figures is not None:
                assert 0 < figures["own_us"] <= figures["us"], row
    assert layers["onnxruntime: run"]["edgekit serve"]["own_us"] == layers["onnxruntime: run"]["edgekit serve"]["us"]
    assert all(value > 0 for value in result["handler_python_us"].values())
    assert (out / "results.md").read_text() == done.stdout
