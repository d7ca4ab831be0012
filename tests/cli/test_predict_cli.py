"""``edgekit predict`` (and ``edgekit serve``) through click's CliRunner against real in-process servers."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import types

import pytest
from click.testing import CliRunner

from edgekit.cli import predict, serve
from edgekit.errors import ConfigError, EdgekitError, InvalidInput
from edgekit.runtime.cloud import EdgekitCloudClient
from tests.fakes import UNSURE, KeywordModel, cloud_model, serving

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def edge_address():
    with serving(cloud_model()) as cloud, serving(KeywordModel(), cloud=EdgekitCloudClient(cloud.address)) as edge:
        yield edge.address


def run(*args: str):
    return CliRunner().invoke(predict.command, list(args))


def test_table_shows_label_score_route_edge_score_and_latency(edge_address):
    result = run("--server", edge_address, "please cancel my order", "I changed my mind about it")
    assert result.exit_code == 0, result.output
    header, edge_row, cloud_row = result.output.splitlines()
    assert header.split() == ["label", "score", "route", "edge", "score", "latency", "ms", "text"]
    assert re.match(r"cancel_order\s+0\.965\s+EDGE\s+0\.965\s+\d+\.\d\s+please cancel my order$", edge_row)
    assert re.match(r"cancel_order\s+0\.965\s+CLOUD\s+0\.333\s+\d+\.\d\s+I changed my mind about it$", cloud_row)


def test_json_lines_one_object_per_text_in_order(edge_address):
    texts = ["where is my order", *UNSURE]
    result = run("--server", edge_address, "--json", "--top-k", "2", *texts)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["text"] for r in records] == texts
    assert [(r["label"], r["route"]) for r in records] == [
        ("track_order", "EDGE"), *((label, "CLOUD") for label in UNSURE.values())
    ]
    assert all(len(r["top_k"]) == 2 and r["model_name"] == "fake-edge" for r in records)
    assert records[0]["score"] == records[0]["edge_score"] == pytest.approx(0.964663, abs=1e-6)


def test_no_cloud_and_threshold_options_reach_the_server(edge_address):
    text = "please cancel my order"
    routes = {}
    for flags in ([], ["--threshold", "1.0"], ["--threshold", "1.0", "--no-cloud"]):
        result = run("--server", edge_address, "--json", *flags, text)
        assert result.exit_code == 0, result.output
        routes[" ".join(flags)] = json.loads(result.output)["route"]
    assert routes == {"": "EDGE", "--threshold 1.0": "CLOUD", "--threshold 1.0 --no-cloud": "EDGE"}


def test_top_k_adds_a_column(edge_address):
    result = run("--server", edge_address, "--top-k", "3", "where is my order")
    assert "top k" in result.output.splitlines()[0]
    assert re.search(r"track_order 0\.\d\d, \w+ 0\.\d\d, \w+ 0\.\d\d", result.output)


def test_server_refusal_is_an_edgekit_error_with_the_reason(edge_address):
    result = run("--server", edge_address, "ok", "   ")
    assert isinstance(result.exception, InvalidInput)
    assert "texts[1] is empty or whitespace only" in str(result.exception)


def test_unreachable_server_is_an_edgekit_error():
    result = run("--server", "127.0.0.1:1", "--timeout-s", "0.5", "hello")
    assert isinstance(result.exception, EdgekitError) and "127.0.0.1:1" in str(result.exception)


def test_options_are_checked_by_click():
    assert run("--server", "x:1", "--top-k", "0", "hi").exit_code == 2
    assert run("--server", "x:1", "--threshold", "1.5", "hi").exit_code == 2
    assert run("--server", "x:1").exit_code == 2  # at least one TEXT


@pytest.fixture
def fake_bundle_loader(monkeypatch):
    """Replaces edgekit.runtime.model so the CLI test needs no real bundle or inference engine."""
    loaded = {}

    def load_bundle_model(bundle_dir, backend="auto", threads=None):
        loaded.update(bundle=bundle_dir, backend=backend, threads=threads)
        return KeywordModel()

    module = types.ModuleType("edgekit.runtime.model")
    module.load_bundle_model = load_bundle_model
    monkeypatch.setitem(sys.modules, "edgekit.runtime.model", module)
    return loaded


def test_serve_prints_the_real_port_and_stops_on_sigterm(tmp_path, fake_bundle_loader, monkeypatch):
    import edgekit.runtime.server as server_module

    started = []
    build = server_module.build_server

    def recording_build(*args, **kwargs):
        assert args[1].max_workers == 4  # the CLI option reached the ServerSettings
        started.append(build(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(server_module, "build_server", recording_build)

    def send_sigterm_when_serving():
        for _ in range(500):  # bounded: 5 s
            if started:
                os.kill(os.getpid(), signal.SIGTERM)  # as a supervisor would; serve waits in the main thread
                return
            threading.Event().wait(0.01)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stopper = threading.Thread(target=send_sigterm_when_serving)
    stopper.start()
    try:
        result = CliRunner().invoke(
            serve.command, [str(tmp_path), "--port", "0", "--backend", "onnxruntime", "--threads", "2",
                            "--max-workers", "4"]
        )
    finally:
        stopper.join(5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert result.exit_code == 0, result.output
    port = started[0].port
    assert result.output.splitlines()[0] == f"serving fake-edge (fake/fp32, backend fake) on 127.0.0.1:{port}"
    assert port > 0 and fake_bundle_loader == {"bundle": tmp_path, "backend": "onnxruntime", "threads": 2}
    assert started[0].wait(0)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--cloud", "127.0.0.1:1", "--cloud-protocol", "kserve-v2"], "needs --cloud-model"),
        (["--cloud", "127.0.0.1:1", "--cloud-model", "m"], "does not apply to --cloud-protocol edgekit"),
        (["--cloud-model", "m"], "needs --cloud HOST:PORT"),
    ],
)
def test_serve_refuses_inconsistent_cloud_options_before_loading(tmp_path, fake_bundle_loader, args, reason):
    result = CliRunner().invoke(serve.command, [str(tmp_path), "--port", "0", *args])
    assert isinstance(result.exception, ConfigError) and reason in str(result.exception)
    assert fake_bundle_loader == {}

