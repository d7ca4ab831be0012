"""Edge → Triton under load and in the demo (issue 14, point 4): ``benchmarks/load.py --cloud-triton``
(rows with Triton's dynamic batching on and off, side by side) and ``make demo-triton``
(``python -m edgekit.cli.demo_triton``: routes EDGE, CLOUD, then EDGE_CLOUD_FAILED with Triton stopped),
and the child-process handling both rely on (edgekit.bench.servers: nothing outlives a run).

The Triton tests need ``EDGEKIT_CLOUD_VENV`` (a venv with ``edgekit[cloud]``, as for
tests/e2e/test_triton_cloud.py) and skip with the reason without it. How they were checked to fail:
with Triton's counters read under the parser's name (``nv_inference_count_total``) every Triton figure was
0; with ``ServerProcess.stop`` sending SIGTERM to the server alone, the grandchild stayed alive.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgekit.bench.load import CLOUD_MODES, MODES, LoadConfig, TritonCloud, format_load_markdown, run_load
from edgekit.bench.servers import ServerProcess, cloud_edgekit, interrupt_on_signals, triton_stats
from edgekit.errors import ConfigError, EdgekitError
from tests.conftest import REPO, needs

pytestmark = pytest.mark.e2e

CLOUD_VENV_ENV = "EDGEKIT_CLOUD_VENV"
SCRIPT = REPO / "benchmarks" / "load.py"
NEEDS_EXPORT = needs("torch", "transformers", "onnxruntime", "onnx")


def _why_not_triton() -> str:
    venv = os.environ.get(CLOUD_VENV_ENV)
    if not venv:
        return f"{CLOUD_VENV_ENV} is not set (a venv with edgekit[cloud]: README, 'The cloud model on Triton')"
    try:
        cloud_edgekit(venv)
    except ConfigError as exc:
        return f"{CLOUD_VENV_ENV}: {exc.message}"
    return ""


_WHY_NOT = _why_not_triton()
needs_triton = pytest.mark.skipif(bool(_WHY_NOT), reason=_WHY_NOT)


# --- child processes: started, found serving, stopped with everything they started -----------------------

_FAKE_SERVER = """
import signal, subprocess, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1] == "exit":
    print("loading ...", flush=True)
    sys.exit(3)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like tritonserver
print(f"child {child.pid}", flush=True)
print("serving fake (onnx/int8, backend x) on 127.0.0.1:4321", flush=True)
print("metrics on http://127.0.0.1:4322/metrics", flush=True)
time.sleep(600)
"""


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, not yet reaped by its new parent
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("mode", ["default", "ignore-term"])
def test_a_server_process_is_stopped_with_what_it_started(tmp_path, mode):
    argv = [sys.executable, "-c", _FAKE_SERVER, mode, "--metrics-port", "0"]
    with ServerProcess(argv, tmp_path / "fake.log", name="fake", timeout_s=60) as server:
        assert (server.address, server.model_name, server.metrics_url) == (
            "127.0.0.1:4321", "fake", "http://127.0.0.1:4322/metrics")
        child = int(server.text().split("child ")[1].split()[0])
        if mode == "ignore-term":
            assert server.stop(grace_s=0.5) == -signal.SIGKILL
    assert not server.running
    assert _gone(child), "the server's child outlived it"


def test_a_server_that_exits_before_serving_says_so_with_its_log(tmp_path):
    with pytest.raises(EdgekitError, match=r"(?s)the fake server exited \(3\) before serving.*loading \.\.\."), \
            ServerProcess([sys.executable, "-c", _FAKE_SERVER, "exit"], tmp_path / "fake.log", name="fake"):
        pass


def test_sigterm_becomes_keyboard_interrupt_meanwhile():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupt_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, at once
    assert signal.getsignal(signal.SIGTERM) is before


def test_triton_counters_are_read_per_model(tmp_path):
    body = "\n".join([
        "# HELP nv_inference_count Number of inferences performed",
        "# TYPE nv_inference_count counter",
        'nv_inference_count{model="shop",version="1"} 12',
        'nv_inference_count{model="other",version="1"} 99',
        "# TYPE nv_inference_exec_count counter",
        'nv_inference_exec_count{model="shop",version="1"} 4',
        "# TYPE nv_inference_request_success counter",
        'nv_inference_request_success{model="shop",version="1"} 12',
        "# TYPE nv_inference_queue_duration_us counter",
        'nv_inference_queue_duration_us{model="shop",version="1"} 600',
    ]) + "\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stats = triton_stats(f"http://127.0.0.1:{server.server_address[1]}/metrics", "shop")
    finally:
        server.shutdown()
        server.server_close()
    assert stats == {"requests": 12.0, "inferences": 12.0, "executions": 4.0, "queue_us": 600.0,
                     "compute_us": 0.0, "request_us": 0.0}


@needs("torch", "transformers", "accelerate")
def test_demo_triton_runs_the_demo_first_when_its_bundle_is_missing(tmp_path, monkeypatch):
    import edgekit.demo
    from edgekit.cli.demo_triton import _demo_outputs

    ran = []

    def run_demo(out, echo):
        ran.append(out)
        (out / "bundles" / "onnx-int8").mkdir(parents=True)
        (out / "bundles" / "onnx-int8" / "manifest.json").write_text("{}")

    monkeypatch.setattr(edgekit.demo, "run_demo", run_demo)
    monkeypatch.setattr(edgekit.demo, "cloud_model_dir", lambda echo: tmp_path / "model")
    lines: list[str] = []
    assert _demo_outputs(tmp_path / "out", lines.append) == (tmp_path / "model", tmp_path / "out/bundles/onnx-int8")
    assert ran == [tmp_path / "out"] and "running the demo first" in lines[0]
    assert _demo_outputs(tmp_path / "out", lines.append)[1].name == "onnx-int8" and ran == [tmp_path / "out"]


# --- the load benchmark's cloud options, refused before anything loads ---------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fraction": 1.5}, r"cloud fraction must lie in \[0, 1\]"),
    ({"timeout_ms": 0}, "cloud timeout_ms must be a finite number > 0"),
    ({"inflight": 0}, "cloud inflight must be a whole number >= 1"),
    ({"max_batch_size": 0}, "Triton max_batch_size must be a whole number >= 1"),
    ({"queue_delay_us": -1}, "Triton queue_delay_us must be a whole number >= 0"),
])
def test_bad_cloud_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TritonCloud(model_dir=tmp_path, venv=tmp_path, **kwargs)


def test_a_cloud_venv_without_edgekit_is_refused_before_loading(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    config = LoadConfig(progress=False, cloud=TritonCloud(model_dir=tmp_path / "model", venv=tmp_path / "venv"))
    with pytest.raises(ConfigError, match="is not a venv with edgekit installed") as info:
        run_load(tmp_path / "no-bundle", ["where is my order"], config)  # no bundle there: never reached
    assert "pip install torch==2.13.0" in info.value.hint


def _script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_script_refuses_cloud_options_without_cloud_triton(tmp_path, small_splits):
    done = _script(str(tmp_path), "--test", str(small_splits["test"]), "--cloud-fraction", "0.5")
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: --cloud-fraction applies with --cloud-triton MODEL_DIR only"


# --- a real Triton -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_classifier, tiny_export_inputs):
    """An ONNX fp32 bundle of the tiny classifier, exported without distillation and calibration
    (as tests/integration/test_bench_load.py makes one): the cloud rows choose their own threshold."""
    from edgekit.converters.exporters import get_exporter
    from edgekit.manifest import Manifest

    art = get_exporter("onnx").export(tiny_export_inputs, "fp32", tmp_path_factory.mktemp("bundles") / "onnx-fp32")
    shutil.copy(tiny_classifier / "tokenizer.json", art.directory / "tokenizer.json")
    id2label = json.loads((tiny_classifier / "config.json").read_text())["id2label"]
    Manifest(format="onnx", precision=art.precision, labels=[id2label[str(i)] for i in range(len(id2label))],
             model_files=art.model_files, max_length=tiny_export_inputs.max_length, name="tiny").save(art.directory)
    return art.directory


@needs_triton
@NEEDS_EXPORT
def test_load_rows_with_triton_batching_on_and_off(bundle, tiny_classifier, small_splits, tmp_path):
    out = tmp_path / "out"
    done = _script(str(bundle), "--test", str(small_splits["test"]), "--clients", "3", "--seconds", "1",
                   "--no-progress", "--cloud-triton", str(tiny_classifier), "--cloud-venv", os.environ[CLOUD_VENV_ENV],
                   "--triton-queue-delay-us", "2000", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "load.json").read_text())
    assert [row["mode"] for row in result["rows"]] == [*MODES, *CLOUD_MODES]
    assert result["cloud"]["threshold"] == 1.0 and result["cloud"]["inflight"] == 3
    rows = {row["mode"]: row for row in result["rows"]}
    for mode, dynamic in zip(CLOUD_MODES, (True, False)):
        row, triton = rows[mode], rows[mode]["triton"]
        assert row["requests"] > 0 and row["errors"] == 0 and row["routes"]["EDGE_CLOUD_FAILED"] == 0, row
        assert row["routes"]["CLOUD"] > 0 and row["cloud_share"] > 0.5, row  # the tiny model is rarely sure
        assert 0 < row["cloud_latency_ms_p50"] <= row["cloud_latency_ms_p99"], row
        assert triton["dynamic_batching"] is dynamic
        assert triton["requests"] == triton["texts"] >= row["routes"]["CLOUD"], row  # one text per cloud call
        assert 0 < triton["model_calls"] <= triton["requests"], row
    assert rows["cloud-triton-no-batching"]["triton"]["mean_batch"] == 1.0  # every request its own model call
    assert rows["cloud-triton-no-batching"]["triton"]["queue_delay_us"] is None
    table = (out / "load.md").read_text()
    assert table == done.stdout and format_load_markdown(result) == table
    assert "| cloud-triton-batching | dynamic | " in table and "| cloud-triton-no-batching | off | " in table


@needs_triton
@NEEDS_EXPORT
def test_demo_triton_shows_edge_cloud_then_edge_cloud_failed(bundle, tiny_classifier, tmp_path, monkeypatch):
    import edgekit.demo
    from edgekit.cli.demo_triton import run_demo_triton

    out = tmp_path / "demo-output"
    shutil.copytree(bundle, out / "bundles" / "onnx-int8")  # as `make demo` leaves it
    monkeypatch.setattr(edgekit.demo, "cloud_model_dir", lambda echo: tiny_classifier)
    lines: list[str] = []
    run_demo_triton(out, Path(os.environ[CLOUD_VENV_ENV]), lines.append)
    text = "\n".join(lines)
    assert "engine triton" in text and "--cloud-protocol kserve-v2" in text
    shown = [line.split()[0] for line in lines if line.startswith("    ") and line.split()[0] in
             ("EDGE", "CLOUD", "EDGE_CLOUD_FAILED")]
    failed_at = shown.index("EDGE_CLOUD_FAILED")
    assert "CLOUD" in shown[:failed_at] and set(shown[failed_at:]) == {"EDGE_CLOUD_FAILED"}, text
    assert "Triton stopped (SIGTERM, exit code 0)" in text and lines[-1] == "[7] both servers stopped"
    logs = out / "triton-demo"
    assert (logs / "triton.log").is_file() and (logs / "edge.log").is_file()
