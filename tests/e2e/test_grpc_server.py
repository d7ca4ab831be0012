"""Real gRPC servers on 127.0.0.1 (OS-chosen ports): a fake edge model, and a second server
serving a fake cloud model that is right where the edge is wrong, so routes show in labels."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from edgekit.errors import EdgekitError, InvalidInput
from edgekit.runtime.batching import BatchSettings
from edgekit.runtime.cascade import CascadeSettings
from edgekit.runtime.client import EdgeClient
from edgekit.runtime.cloud import EdgekitCloudClient, KServeV2CloudClient
from edgekit.runtime.grpc import decode_bytes_tensor, encode_bytes_tensor
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc
from edgekit.runtime.server import build_server
from edgekit.runtime.types import Route
from tests.fakes import CONFIDENT, UNSURE, KeywordModel, cloud_model, serving

pytestmark = pytest.mark.e2e

CLOUD_TIMEOUT_MS = 200
MARGIN_S = 0.5
EDGE_GUESS = "track_order"  # what the edge fake answers when it has no clue (uniform logits)


@pytest.fixture
def cloud_server():
    with serving(cloud_model()) as server:
        yield server


@pytest.fixture
def edge_server(cloud_server):
    cloud = EdgekitCloudClient(cloud_server.address)
    with serving(KeywordModel(), cloud=cloud, cascade=CascadeSettings(cloud_timeout_ms=CLOUD_TIMEOUT_MS)) as server:
        yield server


@pytest.fixture
def client(edge_server):
    with EdgeClient(edge_server.address, timeout_s=5) as client:
        yield client


@pytest.fixture
def channel(edge_server):
    with grpc.insecure_channel(edge_server.address) as channel:
        yield channel


def test_confident_query_is_answered_at_the_edge(client):
    [p] = client.classify(["please cancel my order"], top_k=2)
    assert (p.label, p.route, p.model_name, p.model_version) == ("cancel_order", Route.EDGE, "fake-edge", "3")
    assert p.score == p.edge_score > 0.9 and len(p.top_k) == 2 and p.top_k[0][0] == "cancel_order"
    assert p.latency_ms > 0


def test_unsure_queries_go_to_the_cloud_and_threshold_one_sends_everything(client):
    unsure = client.classify(list(UNSURE))
    assert [p.route for p in unsure] == [Route.CLOUD, Route.CLOUD]
    assert [p.label for p in unsure] == list(UNSURE.values())  # the cloud's right answers...
    assert all(p.label != EDGE_GUESS for p in unsure)  # ...not the edge's guess
    assert all(p.edge_score < 0.6 < p.score for p in unsure)

    texts = CONFIDENT + list(UNSURE)
    everything = client.classify(texts, threshold=1.0)
    assert [p.route for p in everything] == [Route.CLOUD] * len(texts)
    assert [p.label for p in everything] == [cloud_model().predict(t)[0] for t in texts]

    edge_only = client.classify(list(UNSURE), allow_cloud=False)
    assert [(p.label, p.route) for p in edge_only] == [(EDGE_GUESS, Route.EDGE)] * 2


def test_stopped_cloud_degrades_within_the_timeout(client, cloud_server):
    cloud_server.stop(grace_s=0)
    for _ in range(3):
        start = time.monotonic()
        predictions = client.classify(list(UNSURE))
        assert time.monotonic() - start < CLOUD_TIMEOUT_MS / 1000 + MARGIN_S
        assert [(p.label, p.route) for p in predictions] == [(EDGE_GUESS, Route.EDGE_CLOUD_FAILED)] * 2


def test_fail_policy_turns_a_dead_cloud_into_unavailable():
    cloud = EdgekitCloudClient("127.0.0.1:1")  # nothing listens there
    settings = CascadeSettings(on_cloud_error="fail", cloud_timeout_ms=CLOUD_TIMEOUT_MS)
    with serving(KeywordModel(), cloud=cloud, cascade=settings) as edge, grpc.insecure_channel(edge.address) as channel:
        stub = ek_grpc.EdgeClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(ek.ClassifyRequest(texts=list(UNSURE)), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cloud model at 127.0.0.1:1 failed" in info.value.details()
        assert stub.Classify(ek.ClassifyRequest(texts=CONFIDENT), timeout=5).predictions[0].route == ek.ROUTE_EDGE


def test_hanging_cloud_is_cut_off_at_the_timeout():
    hanging = cloud_model(hold_on="slow")
    with serving(hanging) as cloud_server:
        cloud = EdgekitCloudClient(cloud_server.address)
        settings = CascadeSettings(cloud_timeout_ms=CLOUD_TIMEOUT_MS)
        try:
            with serving(KeywordModel(), cloud=cloud, cascade=settings) as edge, EdgeClient(edge.address) as client:
                start = time.monotonic()
                [p] = client.classify(["a slow question"])
                elapsed = time.monotonic() - start
                assert hanging.entered.is_set()
                assert CLOUD_TIMEOUT_MS / 1000 <= elapsed < CLOUD_TIMEOUT_MS / 1000 + MARGIN_S
                assert (p.label, p.route) == (EDGE_GUESS, Route.EDGE_CLOUD_FAILED)
        finally:
            hanging.release.set()


def test_classify_stream_answers_each_request_in_order(client, channel):
    batches = [["please cancel my order"], list(UNSURE), ["where is my order", "I want a refund"]]
    answers = list(client.classify_stream(batches))
    assert [[p.label for p in a] for a in answers] == [
        ["cancel_order"], list(UNSURE.values()), ["track_order", "get_refund"]
    ]
    stub = ek_grpc.EdgeClassifierStub(channel)
    requests = [ek.ClassifyRequest(texts=[t], request_id=f"r{i}") for i, t in enumerate(CONFIDENT)]
    responses = list(stub.ClassifyStream(iter(requests), timeout=5))
    assert [r.request_id for r in responses] == ["r0", "r1", "r2"]

    bad = [ek.ClassifyRequest(texts=["where is my order"]), ek.ClassifyRequest(texts=[])]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ClassifyStream(iter(bad), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_kwargs", "reason"),
    [
        ({"texts": []}, "no texts"),
        ({"texts": ["ok"] * 65}, "65 texts in one request; at most 64 are allowed"),
        ({"texts": ["ok", "x" * 2001]}, "texts[1] has 2001 characters; at most 2000 are allowed"),
        ({"texts": ["ok", "   "]}, "texts[1] is empty or whitespace only"),
        ({"texts": ["ok"], "threshold": 1.5}, "threshold must lie in [0, 1]"),
    ],
)
def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(channel, request_kwargs, reason):
    stub = ek_grpc.EdgeClassifierStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(ek.ClassifyRequest(**request_kwargs), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in info.value.details()
    assert stub.Classify(ek.ClassifyRequest(texts=["where is my order"]), timeout=5).predictions[0].label == "track_order"


def test_client_raises_invalid_input_with_the_servers_reason(client):
    with pytest.raises(InvalidInput, match="no texts"):
        client.classify([])


def test_a_model_bug_is_internal_without_details_and_the_server_survives():
    with serving(KeywordModel(fail_on="boom")) as server, grpc.insecure_channel(server.address) as channel:
        stub = ek_grpc.EdgeClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(ek.ClassifyRequest(texts=["boom"]), timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "exploded" not in info.value.details()
        assert stub.Classify(ek.ClassifyRequest(texts=["where is my order"]), timeout=5).predictions[0].label


def test_model_info_describes_the_served_model(client):
    info = client.model_info()
    assert (info.name, info.version, info.format, info.precision, info.backend) == ("fake-edge", "3", "fake", "fp32", "fake")
    assert info.labels == ("track_order", "cancel_order", "get_refund")
    assert (info.max_length, info.temperature, info.threshold) == (32, 1.0, pytest.approx(0.6))
    assert info.summary == {"fake": True, "labels": 3}


def test_health_is_serving_and_reflection_lists_the_services(client, channel):
    assert client.health() == "SERVING"
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("edgekit.v1.EdgeClassifier", "inference.GRPCInferenceService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "edgekit.v1.EdgeClassifier",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_v2_metadata_and_readiness(channel):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(v2.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(v2.ServerReadyRequest(), timeout=5).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name="fake-edge"), timeout=5).ready
    assert stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=5).name == "edgekit"
    meta = stub.ModelMetadata(v2.ModelMetadataRequest(name="fake-edge", version="3"), timeout=5)
    assert list(meta.versions) == ["3"] and meta.platform == "edgekit_fake"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("label", "BYTES"), ("score", "FP32"), ("route", "BYTES")]
    for request in (v2.ModelMetadataRequest(name="nope"), v2.ModelMetadataRequest(name="fake-edge", version="9")):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "fake-edge" in info.value.details()


def _text_input(texts: list[str], shape: list[int] | None = None, **kwargs) -> v2.ModelInferRequest.InferInputTensor:
    return v2.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=shape or [len(texts)], **kwargs
    )


def test_v2_model_infer_typed_and_raw_contents_agree_with_classify(client, channel):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    texts = CONFIDENT + list(UNSURE)
    expected = client.classify(texts)

    typed = stub.ModelInfer(
        v2.ModelInferRequest(
            model_name="fake-edge",
            id="req-1",
            inputs=[_text_input(texts, contents=v2.InferTensorContents(bytes_contents=[t.encode() for t in texts]))],
        ),
        timeout=5,
    )
    outputs = {o.name: o for o in typed.outputs}
    assert typed.id == "req-1" and not typed.raw_output_contents
    assert [b.decode() for b in outputs["label"].contents.bytes_contents] == [p.label for p in expected]
    assert list(outputs["score"].contents.fp32_contents) == pytest.approx([p.score for p in expected])
    assert json.loads(typed.parameters["routes"].string_param) == [p.route.value for p in expected]
    assert json.loads(typed.parameters["edge_scores"].string_param) == pytest.approx([p.edge_score for p in expected])

    raw = stub.ModelInfer(
        v2.ModelInferRequest(
            model_name="fake-edge",
            inputs=[_text_input(texts, shape=[len(texts), 1])],
            outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="route"),
                     v2.ModelInferRequest.InferRequestedOutputTensor(name="label")],
            raw_input_contents=[encode_bytes_tensor(t.encode() for t in texts)],
        ),
        timeout=5,
    )
    assert [(o.name, list(o.shape)) for o in raw.outputs] == [("route", [5, 1]), ("label", [5, 1])]
    routes, labels = (decode_bytes_tensor(r) for r in raw.raw_output_contents)
    assert [b.decode() for b in labels] == [p.label for p in expected]
    assert [b.decode() for b in routes] == ["EDGE", "EDGE", "EDGE", "CLOUD", "CLOUD"]


@pytest.mark.parametrize(
    ("request_kwargs", "reason"),
    [
        ({"inputs": [v2.ModelInferRequest.InferInputTensor(name="txt", datatype="BYTES", shape=[1])]}, "named 'text'"),
        ({"inputs": [_text_input(["a"])], "raw_input_contents": [b"\x09\x00\x00\x00abc"]}, "claims 9 bytes"),
        ({"inputs": [_text_input(["a"], shape=[2])], "raw_input_contents": [encode_bytes_tensor([b"a"])]}, "1 elements"),
        ({"inputs": [_text_input(["a"], shape=[1, 2])]}, "expected [N] or [N, 1]"),
        ({"inputs": [_text_input(["a"], contents=v2.InferTensorContents(bytes_contents=[b"\xff"]))]}, "UTF-8"),
        ({"inputs": [_text_input(["a"], contents=v2.InferTensorContents(bytes_contents=[b"a"]))],
          "outputs": [v2.ModelInferRequest.InferRequestedOutputTensor(name="logits")]}, "unknown output"),
        ({"inputs": [_text_input(["a"], contents=v2.InferTensorContents(bytes_contents=[b"a"]))],
          "parameters": {"threshold": v2.InferParameter(bool_param=True)}}, "'threshold' must be a float"),
    ],
)
def test_v2_bad_inputs_are_invalid_argument_with_the_reason(channel, request_kwargs, reason):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(v2.ModelInferRequest(model_name="fake-edge", **request_kwargs), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in info.value.details()


def test_v2_parameters_set_threshold_and_cloud_permission(channel):
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    text = "please cancel my order"

    def route(**parameters) -> str:
        response = stub.ModelInfer(
            v2.ModelInferRequest(
                model_name="fake-edge",
                inputs=[_text_input([text], contents=v2.InferTensorContents(bytes_contents=[text.encode()]))],
                parameters=parameters,
            ),
            timeout=5,
        )
        return json.loads(response.parameters["routes"].string_param)[0]

    assert route() == "EDGE"
    assert route(threshold=v2.InferParameter(double_param=1.0)) == "CLOUD"
    assert route(threshold=v2.InferParameter(string_param="1.0")) == "CLOUD"
    assert route(threshold=v2.InferParameter(double_param=1.0), allow_cloud=v2.InferParameter(bool_param=False)) == "EDGE"


TRITON_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

url, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = triton.InferenceServerClient(url=url)
text = triton.InferInput("text", [len(texts)], "BYTES")
text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
outputs = [triton.InferRequestedOutput(name) for name in ("label", "score", "route")]
result = client.infer(model, [text], outputs=outputs)
try:
    client.get_model_metadata("no-such-model")
    missing = "found"
except InferenceServerException as exc:
    missing = exc.status()
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "metadata": client.get_model_metadata(model, as_json=True),
    "labels": [b.decode() for b in result.as_numpy("label")],
    "scores": result.as_numpy("score").tolist(),
    "routes": [b.decode() for b in result.as_numpy("route")],
    "missing": missing,
}))
"""


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason='needs pip install "tritonclient[grpc]"')
def test_tritonclient_interoperates(client, edge_server):
    # tritonclient's generated code defines the same inference.* protobuf symbols as ours, and
    # one process cannot load both: it runs in its own process, as a real Triton client would.
    texts = CONFIDENT + list(UNSURE)
    proc = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, edge_server.address, "fake-edge", json.dumps(texts)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout)
    expected = client.classify(texts)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["metadata"]["name"] == "fake-edge" and seen["metadata"]["versions"] == ["3"]
    assert [i["name"] for i in seen["metadata"]["inputs"]] == ["text"]
    assert seen["labels"] == [p.label for p in expected]
    assert seen["scores"] == pytest.approx([p.score for p in expected])
    assert seen["routes"] == ["EDGE", "EDGE", "EDGE", "CLOUD", "CLOUD"]
    assert seen["missing"] == "StatusCode.NOT_FOUND"


def test_kserve_v2_cloud_client_falls_back_to_an_oip_v2_endpoint(cloud_server):
    cloud = KServeV2CloudClient(cloud_server.address, "fake-cloud")
    with serving(KeywordModel(), cloud=cloud) as edge, EdgeClient(edge.address) as client:
        predictions = client.classify(CONFIDENT[:1] + list(UNSURE))
        assert [(p.label, p.route) for p in predictions] == [
            ("cancel_order", Route.EDGE), *((label, Route.CLOUD) for label in UNSURE.values())
        ]
        assert predictions[1].score == pytest.approx(cloud_model().predict(list(UNSURE)[0])[1])

    wrong_name = KServeV2CloudClient(cloud_server.address, "no-such-model")
    with serving(KeywordModel(), cloud=wrong_name) as edge, EdgeClient(edge.address) as client:
        assert [p.route for p in client.classify(list(UNSURE))] == [Route.EDGE_CLOUD_FAILED] * 2


def test_metrics_are_served_over_http():
    with serving(KeywordModel(), metrics_port=0) as server, EdgeClient(server.address) as client:
        client.classify(CONFIDENT)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
    assert 'edgekit_requests_total{backend="fake",status="ok"} 1.0' in body
    assert 'edgekit_predictions_total{backend="fake",route="EDGE"} 3.0' in body


def test_sigterm_drains_in_flight_requests_then_stops():
    model = KeywordModel(hold_on="slow")
    server = build_server(model, host="127.0.0.1", port=0, batching=BatchSettings(max_batch_size=1))
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.install_signal_handlers(grace_s=5)
        with EdgeClient(server.address, timeout_s=5) as client, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.classify, ["slow: where is my order"])
            assert model.entered.wait(5)
            os.kill(os.getpid(), signal.SIGTERM)  # as a supervisor would
            with pytest.raises(EdgekitError, match="UNAVAILABLE|CANCELLED"):  # new work is refused while draining
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    client.classify(["where is my order"])
                    time.sleep(0.01)
            assert not in_flight.done()
            model.release.set()
            [p] = in_flight.result(5)
        assert (p.label, p.route) == ("track_order", Route.EDGE)
        assert server.wait(5) and model.closed
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        model.release.set()
        server.stop(grace_s=0)
