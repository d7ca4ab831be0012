"""Bad input (issue 13, point 4): whatever a buggy or hostile client sends to Classify,
ClassifyStream or ModelInfer, the server answers INVALID_ARGUMENT with a reason (or a valid
answer), keeps serving, and its memory stays flat; a bundle whose manifest points outside
itself is refused.

Property-based (hypothesis, derandomized so CI runs the same examples): random Unicode (control
characters, NUL, right-to-left marks, emoji), empty and whitespace-only texts, megabyte texts,
too many texts, random tensor names, datatypes and shapes, and random bytes on a raw channel.

How each test was checked to fail: without ``_tolerant`` in the ErrorInterceptor the raw-bytes
tests get INTERNAL ("Exception deserializing request!") instead of INVALID_ARGUMENT; without
``Manifest.check_paths`` the symlinked bundle loads; without ``_check_relative`` the ``../``
manifest loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from edgekit.errors import ManifestError
from edgekit.manifest import Manifest
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.e2e

EXAMPLES = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_TEXTS, MAX_CHARS = 64, 2000  # the server's defaults (runtime.dataplane.Limits)

# every code point a protobuf string can carry (no lone surrogates), weighted towards the nasty ones
_NASTY = st.sampled_from(["\x00", "\u202e", "\u200f", "\ufeff", "\U0001f6d2", "\u0301", "\r", "\n", "\t", " ", "\x7f"])
_CHARS = st.one_of(st.characters(blacklist_categories=("Cs",)), _NASTY)
TEXT = st.text(_CHARS, max_size=200)


class Server:
    """`edgekit serve` on a small real bundle, in its own process (its memory is its own)."""

    def __init__(self, bundle: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            if line.startswith("serving "):
                self.address = line.rsplit(" on ", 1)[1].strip()
                break
        else:
            raise AssertionError(f"edgekit serve did not start: {self.proc.wait()}")
        self.channel = grpc.insecure_channel(self.address)
        self.stub = ek_grpc.EdgeClassifierStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self.raw = {name: self.channel.unary_unary(f"/edgekit.v1.EdgeClassifier/{name}")
                    for name in ("Classify", "GetModelInfo")}
        self.raw_infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.info = self.stub.GetModelInfo(ek.GetModelInfoRequest(), timeout=10)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def still_serving(self) -> None:
        reply = self.stub.Classify(ek.ClassifyRequest(texts=["where is my order?"]), timeout=10)
        assert reply.predictions[0].label in self.info.labels

    def close(self) -> None:
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server(converted):
    bundle = next(b for b in converted.bundles if b.name == "onnx-int8")
    s = Server(bundle)
    for _ in range(200):  # warm up before memory is compared
        s.still_serving()
    s.rss_start = s.rss_kb()
    yield s
    s.close()


def _valid(texts: list[str]) -> bool:
    return 0 < len(texts) <= MAX_TEXTS and all(t.strip() and len(t) <= MAX_CHARS for t in texts)


def _invalid_argument(exc: grpc.RpcError) -> None:
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
    assert exc.details(), "INVALID_ARGUMENT without a reason"


@EXAMPLES
@given(texts=st.lists(TEXT, max_size=MAX_TEXTS + 6), top_k=st.integers(0, 100))
def test_classify_answers_or_refuses_any_texts(server, texts, top_k):
    request = ek.ClassifyRequest(texts=texts, top_k=top_k)
    try:
        reply = server.stub.Classify(request, timeout=10)
    except grpc.RpcError as exc:
        _invalid_argument(exc)
        assert not _valid(texts)
        return
    assert _valid(texts)
    assert len(reply.predictions) == len(texts)
    for p in reply.predictions:
        assert p.label in server.info.labels and 0.0 <= p.score <= 1.0
        assert len(p.top_k) == min(max(top_k, 1), len(server.info.labels))


@EXAMPLES
@given(batches=st.lists(st.lists(TEXT, min_size=1, max_size=4), min_size=1, max_size=5))
def test_a_stream_answers_each_request_until_the_first_bad_one(server, batches):
    requests = [ek.ClassifyRequest(texts=texts, request_id=str(i)) for i, texts in enumerate(batches)]
    answered = []
    try:
        for reply in server.stub.ClassifyStream(iter(requests), timeout=20):
            answered.append(reply.request_id)
    except grpc.RpcError as exc:
        _invalid_argument(exc)
        first_bad = next(i for i, texts in enumerate(batches) if not _valid(texts))
        assert answered == [str(i) for i in range(first_bad)]
        return
    assert all(_valid(texts) for texts in batches) and answered == [str(i) for i in range(len(batches))]


@EXAMPLES
@given(data=st.binary(max_size=300))
def test_random_bytes_on_a_raw_channel_are_invalid_argument_or_parse(server, data):
    for call in (server.raw["Classify"], server.raw_infer):
        try:
            call(data, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (exc.code(), exc.details())
            assert exc.details()


def test_invalid_utf8_and_lone_surrogates_are_invalid_argument(server):
    for payload in (b"\xff\xfe", b"\xed\xa0\x80", b"ok\x00\xc3"):  # bad UTF-8; an encoded lone surrogate
        message = b"\x0a" + bytes([len(payload)]) + payload  # field 1 (texts), length-delimited
        with pytest.raises(grpc.RpcError) as info:
            server.raw["Classify"](message, timeout=10)
        _invalid_argument(info.value)
        assert "malformed request message" in info.value.details()


def test_megabyte_texts_and_oversized_messages(server):
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Classify(ek.ClassifyRequest(texts=["a" * 1_000_000]), timeout=10)
    _invalid_argument(info.value)
    assert "at most 2000" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:  # beyond --max-message-bytes: gRPC refuses it unread
        server.stub.Classify(ek.ClassifyRequest(texts=["a" * 5_000_000]), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


_DATATYPES = st.sampled_from(["BYTES", "FP32", "INT64", "BOOL", "", "bytes", "UINT8"])


@EXAMPLES
@given(name=st.sampled_from(["text", "texts", "", "input_ids"]), datatype=_DATATYPES,
       shape=st.lists(st.integers(-3, 5), max_size=3), values=st.lists(st.binary(max_size=40), max_size=6),
       extra_input=st.booleans(), model_name=st.sampled_from(["", "ok", "other"]))
def test_model_infer_answers_or_refuses_any_tensor(server, name, datatype, shape, values, extra_input, model_name):
    request = v2.ModelInferRequest(model_name=server.info.name if model_name == "ok" else model_name)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    tensor.contents.bytes_contents.extend(values)
    if extra_input:
        request.inputs.add(name="extra", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    try:
        reply = server.v2.ModelInfer(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (exc.code(), exc.details())
        assert exc.details()
        return
    assert model_name == "ok" and name == "text" and datatype == "BYTES" and not extra_input
    assert {o.name for o in reply.outputs} == {"label", "score", "route"}


def test_the_server_kept_serving_and_its_memory_stayed_flat(server):
    """Runs after the property tests above (file order): same server, all their requests behind it."""
    for _ in range(200):
        server.still_serving()
    growth = server.rss_kb() / server.rss_start - 1
    assert growth < 0.10, f"resident memory grew {growth:.1%} over the bad-input tests"
    assert server.proc.poll() is None


def _bundle_copy(converted, tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(next(b for b in converted.bundles if b.name == "onnx-int8"), bundle)
    return bundle


@pytest.mark.parametrize("escape", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx"])
def test_manifest_paths_that_escape_the_bundle_are_refused(converted, tmp_path, escape):
    bundle = _bundle_copy(converted, tmp_path)
    data = json.loads((bundle / "manifest.json").read_text())
    data["model_files"] = [escape]
    data["files"][escape] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="relative path inside the bundle"):
        Manifest.load(bundle)


def test_a_symlink_out_of_the_bundle_is_refused(converted, tmp_path):
    from edgekit.runtime.model import load_bundle_model

    bundle = _bundle_copy(converted, tmp_path)
    manifest = Manifest.load(bundle)
    model = bundle / manifest.model_files[0]
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(model, outside)
    os.symlink(outside, model)  # same bytes, so the checksum alone would pass
    with pytest.raises(ManifestError, match="resolves outside the bundle"):
        load_bundle_model(bundle)
    with pytest.raises(ManifestError, match="resolves outside the bundle"):
        load_bundle_model(bundle, verify=False)
