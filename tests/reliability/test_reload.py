"""Hot reload (issue 13, point 3): a new model version is swapped in without a restart and
without losing a request; a bad, tampered or incompatible bundle is refused and the old one
keeps serving; the version served is what GetModelInfo reports.

How each test was checked to fail: with ``DataPlane.swap_model`` closing the old model at once
(instead of after its last request) the held request fails with "closed"; with the label check
(``_check_compatible``) removed the incompatible model is served; with ``Manifest.verify`` left
out of the reloader (``verify=False``) the tampered bundle is served; without the SIGHUP handler
the served precision never changes and the e2e test times out.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from edgekit.errors import ModelError
from edgekit.runtime.dataplane import DataPlane
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from tests.fakes import EDGE_KEYWORDS, KeywordModel


class ClosingModel(KeywordModel):
    """A KeywordModel that refuses to run once closed (as a real engine session would)."""

    def logits(self, texts):
        if self.closed:
            raise RuntimeError("the model is closed")
        return super().logits(texts)


def test_swap_keeps_in_flight_requests_on_the_old_model_and_sends_new_ones_to_the_new():
    old, new = ClosingModel(version="3", hold_on="hold"), ClosingModel(version="4")
    dataplane = DataPlane(old)
    try:
        answers: list = []
        held = threading.Thread(target=lambda: answers.extend(dataplane.classify(["hold: where is my order"])))
        held.start()
        assert old.entered.wait(5)
        info = dataplane.swap_model(new)
        assert info.version == "4" and dataplane.model_info().version == "4"
        assert dataplane.classify(["cancel it"])[0].model_version == "4"
        assert not old.closed  # a request still runs on it
        old.release.set()
        held.join(timeout=5)
        assert [p.model_version for p in answers] == ["3"] and answers[0].label == "track_order"
        assert old.closed and not new.closed  # closed after its last request, not before
    finally:
        old.release.set()
        dataplane.close()
    assert new.closed


def test_a_model_with_other_labels_is_refused_and_the_old_one_keeps_serving():
    old = KeywordModel(version="3")
    other = KeywordModel({**EDGE_KEYWORDS, "return_item": ("return",)}, version="4")
    dataplane = DataPlane(old)
    try:
        with pytest.raises(ModelError, match=r"labels differ.*added \['return_item'\]"):
            dataplane.swap_model(other)
        assert other.closed and not old.closed
        assert dataplane.model_info().version == "3"
        assert dataplane.classify(["cancel it"])[0].model_version == "3"
    finally:
        dataplane.close()


def test_a_model_that_fails_its_warm_up_is_refused():
    old, broken = KeywordModel(version="3"), KeywordModel(version="4", fail_on="order")
    dataplane = DataPlane(old, warmup_texts=("where is my order?",))
    try:
        with pytest.raises(ModelError, match="failed its warm-up"):
            dataplane.swap_model(broken)
        assert broken.closed and dataplane.model_info().version == "3"
    finally:
        dataplane.close()


def _start(bundle: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:
        if line.startswith("serving "):
            return proc, line.rsplit(" on ", 1)[1].strip()
    raise AssertionError(f"edgekit serve did not start: {proc.wait()}")


def _replace(target: Path, source: Path) -> None:
    """Put ``source``'s files at ``target`` the way a deployment would: copy beside, then rename."""
    staging = target.with_name(target.name + ".new")
    shutil.copytree(source, staging)
    old = target.with_name(target.name + ".old")
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old)


def _wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.e2e
def test_sighup_swaps_a_new_bundle_in_under_load_and_refuses_a_tampered_one(converted, tmp_path):
    by_name = {b.name: b for b in converted.bundles}
    served = tmp_path / "bundle"
    shutil.copytree(by_name["onnx-fp32"], served)
    proc, address = _start(served)
    channel = grpc.insecure_channel(address)
    stub = ek_grpc.EdgeClassifierStub(channel)
    stop, sent, failures, precisions = threading.Event(), [0], [], set()

    def load() -> None:  # one client that never stops asking while the bundle changes under it
        while not stop.is_set():
            try:
                reply = stub.Classify(ek.ClassifyRequest(texts=["where is my parcel?"]), timeout=10)
                precisions.add(reply.predictions[0].model_version)
            except grpc.RpcError as exc:
                failures.append(exc.code())
            sent[0] += 1

    client = threading.Thread(target=load)
    client.start()
    try:
        precision = lambda: stub.GetModelInfo(ek.GetModelInfoRequest(), timeout=10).precision  # noqa: E731
        assert precision() == "fp32"
        _replace(served, by_name["onnx-int8"])
        proc.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: precision() == "int8"), "the new bundle was not swapped in"

        tampered = tmp_path / "tampered"
        shutil.copytree(by_name["onnx-fp32"], tampered)
        model_file = next(p for p in tampered.iterdir() if p.suffix == ".onnx")
        data = bytearray(model_file.read_bytes())
        data[-1] ^= 0xFF
        model_file.write_bytes(bytes(data))
        _replace(served, tampered)
        proc.send_signal(signal.SIGHUP)
        time.sleep(3)  # long enough to load, verify and refuse it
        assert precision() == "int8"  # still the last good version
    finally:
        stop.set()
        client.join(timeout=10)
        channel.close()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert failures == [] and sent[0] > 10
    assert "event=reload_refused" in output and "does not match its checksum" in output
