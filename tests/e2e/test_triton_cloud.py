"""The cloud tier on a real Triton Inference Server (issue 14): ``edgekit serve-cloud MODEL_DIR --engine
triton`` (PyTriton, in the cloud venv: it needs numpy < 2) serves the tiny fine-tuned classifier, and a
real ``edgekit serve BUNDLE --cloud-protocol kserve-v2`` (this venv) sits in front of it.

Checked: routes EDGE and CLOUD (the cloud's answers are the classifier's own), a hung Triton cut at the
edge's cloud deadline (EDGE_CLOUD_FAILED), a bundle with other labels refused at start-up, Triton stopped
(EDGE_CLOUD_FAILED within the deadline) and then the circuit breaker open.

The Triton tests need ``EDGEKIT_CLOUD_VENV``: a venv with ``edgekit[cloud]`` installed (README, "The
cloud model on Triton"; .ci/run makes one and fails if these tests were skipped). How they were checked
to fail: with the client always sending ``[N]`` Triton refuses every call (route EDGE_CLOUD_FAILED instead
of CLOUD); without ``expect_labels`` in ``edgekit serve`` the mismatched bundle starts serving.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc
from edgekit.runtime.types import Route

pytestmark = pytest.mark.e2e

CLOUD_VENV_ENV = "EDGEKIT_CLOUD_VENV"
MODEL_NAME = "tiny-cloud"
CLOUD_TIMEOUT_MS = 3000  # generous: these 2 cores are shared; the deadline checks allow for it
TEXTS = ["where is my order", "i want my money back for the blender", "when do you open on sunday",
         "can i buy a gift card", "let me talk to a person", "what is the weather on mars"]
_SERVING = re.compile(r"^serving .* on [\w.\-\[\]:]*:(\d+)\s*$", re.MULTILINE)
_METRICS = re.compile(r"^metrics on (http://\S+)\s*$", re.MULTILINE)


class _Process:
    """A server subprocess whose output goes to a file (Triton logs a lot: a pipe nobody reads would fill)."""

    def __init__(self, argv: list[str], log: Path, *, timeout_s: float) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        while not (match := _SERVING.search(self.text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{argv[:3]} did not start serving:\n" + self.text()[-3000:])
            time.sleep(0.2)
        self.port = int(match.group(1))
        self.address = f"127.0.0.1:{self.port}"
        metrics = _METRICS.search(self.text())
        self.metrics_url = metrics.group(1) if metrics else None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            body = response.read().decode()
        return sum(s.value for family in text_string_to_metric_families(body) for s in family.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def _cloud_edgekit() -> tuple[Path | None, str]:
    """``edgekit`` of the cloud venv, or None and the one-line reason to skip (decided at collection,
    before any fixture builds a model)."""
    venv = os.environ.get(CLOUD_VENV_ENV)
    if not venv:
        return None, f"{CLOUD_VENV_ENV} is not set (a venv with edgekit[cloud]: README, 'The cloud model on Triton')"
    exe, python = Path(venv) / "bin" / "edgekit", Path(venv) / "bin" / "python"
    if not exe.is_file():
        return None, f"{CLOUD_VENV_ENV}={venv} has no bin/edgekit"
    if subprocess.run([str(python), "-c", "import pytriton.triton"], check=False, capture_output=True).returncode != 0:
        return None, f"{CLOUD_VENV_ENV}={venv} lacks nvidia-pytriton (pip install edgekit[cloud] there)"
    return exe, ""


CLOUD_EDGEKIT, _WHY_NOT = _cloud_edgekit()
needs_triton = pytest.mark.skipif(CLOUD_EDGEKIT is None, reason=_WHY_NOT)


@pytest.fixture(scope="module")
def triton_cloud(tiny_classifier, tmp_path_factory):
    logs = tmp_path_factory.mktemp("triton-cloud")
    cloud = _Process([str(CLOUD_EDGEKIT), "serve-cloud", str(tiny_classifier), "--engine", "triton", "--port", "0",
                      "--model-name", MODEL_NAME, "--triton-max-batch-size", "16", "--triton-queue-delay-us", "200"],
                     logs / "triton.log", timeout_s=300)
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def bundle(converted) -> Path:
    return next(b for b in converted.bundles if b.name == "onnx-fp32")


def _edge_argv(bundle: Path, cloud: _Process, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0", "--threads", "1",
            "--cloud", cloud.address, "--cloud-protocol", "kserve-v2", "--cloud-model", MODEL_NAME,
            "--cloud-timeout-ms", str(CLOUD_TIMEOUT_MS), *extra]


@pytest.fixture(scope="module")
def edge(bundle, triton_cloud, tmp_path_factory):
    server = _Process(_edge_argv(bundle, triton_cloud, "--metrics-port", "0"),
                      tmp_path_factory.mktemp("edge") / "edge.log", timeout_s=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(edge):
    from edgekit.runtime.client import EdgeClient

    with EdgeClient(edge.address, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def torch_answers(tiny_classifier):
    """What the cloud model itself answers (label, probability) for TEXTS, loaded here with the torch engine."""
    from edgekit.metrics import softmax
    from edgekit.runtime.model import load_model

    model = load_model(tiny_classifier)
    try:
        probs = softmax(model.logits(TEXTS), model.info.temperature)
        return [(model.info.labels[i], float(p[i])) for i, p in zip(probs.argmax(-1), probs)]
    finally:
        model.close()


# --- without Triton: the pieces around it -------------------------------------------------------------

class _FakeModel:
    class info:
        labels = ("a", "b", "c")
        temperature = 1.0

    def logits(self, texts):
        return np.array([[0.0, 2.0, 1.0] if "b" in t else [3.0, 0.0, 1.0] for t in texts], np.float32)


def test_one_triton_batch_gives_four_outputs_with_the_batch_dimension():
    from edgekit.errors import InvalidInput
    from edgekit.runtime.triton import classify_batch

    out = classify_batch(_FakeModel(), np.array([[b"xb"], [b"x"], ["caf\u00e9 b".encode()]], dtype=np.object_), 2)
    assert out["label"].shape == (3, 1) and out["label"][:, 0].tolist() == [b"b", b"a", b"b"]
    assert out["score"].dtype == np.float32 and out["score"].shape == (3, 1)
    assert out["top_labels"].tolist() == [[b"b", b"c"], [b"a", b"c"], [b"b", b"c"]]
    assert out["top_scores"].dtype == np.float32 and (np.diff(out["top_scores"], axis=1) <= 0).all()
    np.testing.assert_allclose(out["score"][:, 0], out["top_scores"][:, 0])
    with pytest.raises(InvalidInput, match=r"shape \[N, 1\]"):
        classify_batch(_FakeModel(), np.array([b"x"], dtype=np.object_), 2)
    with pytest.raises(InvalidInput, match="UTF-8"):
        classify_batch(_FakeModel(), np.array([[b"\xff"]], dtype=np.object_), 2)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--engine", "triton", "--max-wait-ms", "5"], 2, "--max-wait-ms applies to --engine edgekit only"),
    (["--instances", "2"], 2, "--instances applies to --engine triton only"),
    (["--engine", "triton", "--model-name", "no spaces"], 2, "not allowed by Triton"),
])
def test_serve_cloud_refuses_options_of_the_other_engine(tmp_path, capsys, args, code, message):
    from edgekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve-cloud", str(tmp_path), *args])
    assert exit_info.value.code == code
    assert message in capsys.readouterr().err


def test_serve_cloud_triton_without_the_cloud_extra_names_it(tmp_path, capsys, monkeypatch):
    from edgekit.cli import main

    find_spec = importlib.util.find_spec  # this venv lacks pytriton anyway (numpy 2): made sure of here
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytriton" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve-cloud", str(tmp_path), "--engine", "triton"])
    assert exit_info.value.code == 4
    assert 'pip install "edgekit[cloud]"' in capsys.readouterr().err


# --- the start-up label check, against in-process v2 servers -------------------------------------------

class _TritonLike(v2_grpc.GRPCInferenceServiceServicer):
    """A batching v2 model ([-1, 1] input) answering "get_refund"; with ``labels``, also Triton's
    ModelConfig RPC declaring them (built with the client's own subset of Triton's ModelConfig
    message: the real wire format is what the Triton tests below check)."""

    def __init__(self, labels: list[str] | None, max_batch_size: int = 0) -> None:
        self.labels, self.max_batch_size = labels, max_batch_size
        self.shapes: list[list[int]] = []

    def ModelMetadata(self, request, context):
        T = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(name=request.name, versions=["1"], platform="python",
                                        inputs=[T(name="text", datatype="BYTES", shape=[-1, 1])])

    def ModelInfer(self, request, context):
        shape = list(request.inputs[0].shape)
        self.shapes.append(shape)
        response = v2.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="label", datatype="BYTES", shape=shape).contents.bytes_contents.extend(
            [b"get_refund"] * shape[0])
        response.outputs.add(name="score", datatype="FP32", shape=shape).contents.fp32_contents.extend([0.9] * shape[0])
        return response

    def model_config(self, request, context):
        from edgekit.runtime.cloud import _model_config_response_class

        message = _model_config_response_class()()
        message.config.max_batch_size = self.max_batch_size
        message.config.parameters.add(key="labels").value.string_value = json.dumps(self.labels)
        return message

    def serve(self, port: int = 0):
        from concurrent import futures

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)
        if self.labels is not None:
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
                "ModelConfig": grpc.unary_unary_rpc_method_handler(
                    self.model_config, request_deserializer=v2.ModelMetadataRequest.FromString,
                    response_serializer=lambda m: m.SerializeToString())})])
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        return server, port


LABELS = ["get_refund", "track_order", "cancel_order"]


def test_the_labels_a_triton_config_declares_are_checked_and_its_max_batch_size_kept():
    from edgekit.errors import ModelError
    from edgekit.runtime.cloud import KServeV2CloudClient

    servicer = _TritonLike(LABELS, max_batch_size=2)
    server, port = servicer.serve()
    client = KServeV2CloudClient(f"127.0.0.1:{port}", "m")
    try:
        assert client.expect_labels(list(reversed(LABELS)), timeout_s=5) is True  # order does not matter
        assert client.classify(["a", "b", "c", "d", "e"], timeout_s=5) == [("get_refund", pytest.approx(0.9))] * 5
        assert servicer.shapes == [[2, 1], [2, 1], [1, 1]]  # split by the model's max_batch_size
        with pytest.raises(ModelError, match=r"answers other labels than the bundle: the cloud lacks \['x'\]; "
                                             r"the bundle lacks \['cancel_order'\]$"):
            client.expect_labels(["get_refund", "track_order", "x"], timeout_s=5)
    finally:
        client.close()
        server.stop(0)


def test_a_model_that_declares_no_labels_is_refused_with_the_way_out():
    from edgekit.errors import ModelError
    from edgekit.runtime.cloud import KServeV2CloudClient

    server, port = _TritonLike(None).serve()  # no ModelConfig RPC, no GetModelInfo: a plain v2 server
    client = KServeV2CloudClient(f"127.0.0.1:{port}", "m")
    try:
        with pytest.raises(ModelError, match="declares no label vocabulary") as info:
            client.expect_labels(LABELS, timeout_s=5)
        assert "--skip-cloud-label-check" in info.value.hint
    finally:
        client.close()
        server.stop(0)


def test_an_edgekit_server_behind_kserve_v2_is_checked_through_its_model_info():
    from edgekit.errors import ModelError
    from edgekit.runtime.cloud import KServeV2CloudClient
    from tests.fakes import cloud_model, serving

    with serving(cloud_model()) as cloud:
        client = KServeV2CloudClient(cloud.address, "fake-cloud")
        try:
            assert client.expect_labels(cloud_model().info.labels, timeout_s=5) is True
            with pytest.raises(ModelError, match="other labels"):
                client.expect_labels(("a", "b"), timeout_s=5)
        finally:
            client.close()
        wrong = KServeV2CloudClient(cloud.address, "no-such-model")
        try:
            with pytest.raises(ModelError, match="serves 'fake-cloud', not 'no-such-model'"):
                wrong.expect_labels(cloud_model().info.labels, timeout_s=5)
        finally:
            wrong.close()


def test_a_cloud_down_at_start_up_is_checked_before_its_first_call():
    from edgekit.errors import CloudUnavailable
    from edgekit.runtime.cloud import KServeV2CloudClient

    servicer = _TritonLike(["get_refund", "something_else"])
    server, port = servicer.serve()
    server.stop(0).wait()  # the port is known and nobody listens
    client = KServeV2CloudClient(f"127.0.0.1:{port}", "m")
    try:
        assert client.expect_labels(LABELS, timeout_s=2) is False  # not checked: starts anyway
        server, _ = servicer.serve(port)
        deadline = time.monotonic() + 30
        while True:  # the channel retries the connection after a back-off: UNAVAILABLE until then
            with pytest.raises(CloudUnavailable) as info:
                client.classify(["a"], timeout_s=5)
            if "UNAVAILABLE" not in str(info.value) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "answers other labels than the bundle" in str(info.value)
        with pytest.raises(CloudUnavailable, match="other labels than the bundle"):  # from then on, unasked
            client.classify(["a"], timeout_s=5)
        assert servicer.shapes == []
    finally:
        client.close()
        server.stop(0)


# --- a real Triton as the cloud --------------------------------------------------------------------------

@needs_triton
def test_edge_and_cloud_routes_through_triton(triton_cloud, client, torch_answers):
    edge_only = client.classify(TEXTS, threshold=0.0)
    assert [p.route for p in edge_only] == [Route.EDGE] * len(TEXTS)

    asked = client.classify(TEXTS, threshold=1.0)  # every text the edge is not certain of goes to Triton
    to_cloud = [(p, expected) for p, expected in zip(asked, torch_answers) if p.edge_score < 1.0]
    assert len(to_cloud) >= 3, [p.edge_score for p in asked]
    for p, (label, probability) in to_cloud:
        assert p.route == Route.CLOUD
        assert (p.label, p.score) == (label, pytest.approx(probability, abs=1e-4))


@needs_triton
def test_a_hung_triton_is_cut_at_the_cloud_deadline(triton_cloud, client):
    triton_cloud.proc.send_signal(signal.SIGSTOP)  # Triton takes the call; the model's process never answers
    try:
        started = time.monotonic()
        p = client.classify(TEXTS[:1], threshold=1.0)[0]
        elapsed = time.monotonic() - started
    finally:
        triton_cloud.proc.send_signal(signal.SIGCONT)
    assert p.route == Route.EDGE_CLOUD_FAILED
    assert CLOUD_TIMEOUT_MS / 1000 * 0.9 <= elapsed < CLOUD_TIMEOUT_MS / 1000 + 2.0, elapsed
    assert client.classify(TEXTS[:1], threshold=1.0)[0].route == Route.CLOUD  # and it recovers


@needs_triton
def test_a_bundle_with_other_labels_is_refused_at_start_up(triton_cloud, bundle, tmp_path):
    other = shutil.copytree(bundle, tmp_path / "other-labels")
    manifest = json.loads((other / "manifest.json").read_text())
    renamed = manifest["labels"][0]
    manifest["labels"][0] = "buy_a_boat"
    (other / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run(_edge_argv(other, triton_cloud), check=False, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 5, proc.stdout[-2000:] + proc.stderr[-2000:]  # ModelError
    assert "serving" not in proc.stdout
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err[-1] == (f"Error: the cloud model {MODEL_NAME!r} at {triton_cloud.address} answers other labels than "
                       f"the bundle: the cloud lacks ['buy_a_boat']; the bundle lacks [{renamed!r}]"), err


@needs_triton
def test_triton_stopped_edge_cloud_failed_within_the_deadline_then_the_breaker_opens(triton_cloud, edge, client):
    # last in this file: it stops the module's Triton
    assert triton_cloud.stop() == 0  # SIGTERM: Triton drains and exits cleanly
    failures = 5  # CascadeSettings.breaker_failures (edgekit serve's default)
    for _ in range(failures):
        started = time.monotonic()
        p = client.classify(TEXTS[:1], threshold=1.0)[0]
        assert p.route == Route.EDGE_CLOUD_FAILED
        assert time.monotonic() - started < CLOUD_TIMEOUT_MS / 1000 + 1.0
    assert edge.metric("edgekit_cloud_breaker_open") == 1.0
    started = time.monotonic()
    assert client.classify(TEXTS[:1], threshold=1.0)[0].route == Route.EDGE_CLOUD_FAILED
    assert time.monotonic() - started < 1.0  # the breaker answers at once: no call made
    assert edge.metric("edgekit_cloud_skipped_total", reason="breaker_open") >= 1
