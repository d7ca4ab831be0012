"""Overload control (issue 13, point 1): a bounded queue that refuses at once, recovers by itself
and is counted; a caller's deadline that passes while its request queues means the model never
runs it.

How each test was checked to fail: with ``Limits.max_queue`` effectively unbounded (the
admission check in ``DataPlane._admit`` removed), the refused call blocks behind the held model
and the tests time out on their ``join``; with ``MicroBatcher._drop_expired`` a no-op, the
expired text reaches the model (``seen``) and the deadline tests fail; without
``_check_deadline`` in ``MicroBatcher.submit`` an already-expired request runs on an idle model;
without the ``Admission`` check in ``EdgeServer``'s ErrorInterceptor the RPC beyond ``max_inflight_rpcs`` gets a
worker thread and waits behind the held model instead of being refused.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from edgekit.errors import DeadlineExceeded, Overloaded
from edgekit.runtime.dataplane import DataPlane, Limits
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.fakes import KeywordModel, serving


def _sample(dataplane: DataPlane, name: str, **labels: str) -> float:
    value = dataplane.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except Exception as exc:  # the test inspects it
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _refused_at_once(call) -> Exception:
    """Run ``call`` in a thread; it must raise within a second (a queued call would block)."""
    thread, out = _in_thread(call)
    thread.join(timeout=1.0)
    assert not thread.is_alive(), "the request waited instead of being refused"
    assert "error" in out, f"the request was not refused: {out}"
    return out["error"]


def test_a_full_queue_refuses_at_once_counts_it_and_recovers():
    model = KeywordModel(hold_on="hold")
    dataplane = DataPlane(model, limits=Limits(max_texts=2, max_queue=3))
    try:
        held, held_out = _in_thread(dataplane.classify, ["hold a", "hold b"])
        assert model.entered.wait(5)
        assert _sample(dataplane, "edgekit_queued_texts") == 2

        error = _refused_at_once(lambda: dataplane.classify(["where is it", "cancel it"]))
        assert isinstance(error, Overloaded)
        assert "2 texts queued, at most 3" in str(error) and "--max-queue" in str(error)
        assert _sample(dataplane, "edgekit_requests_total", backend="fake", status="overloaded") == 1
        assert "where is it" not in model.seen

        model.release.set()
        held.join(timeout=5)
        assert len(held_out["value"]) == 2
        assert _sample(dataplane, "edgekit_queued_texts") == 0
        # recovered by itself: the same request now fits
        assert [p.label for p in dataplane.classify(["where is it", "cancel it"])] == ["track_order", "cancel_order"]
    finally:
        model.release.set()
        dataplane.close()


def test_a_deadline_that_passes_in_the_queue_is_not_run():
    model = KeywordModel(hold_on="hold")
    dataplane = DataPlane(model)
    try:
        held, _ = _in_thread(dataplane.classify, ["hold on"])
        assert model.entered.wait(5)
        late, late_out = _in_thread(dataplane.classify, ["where is my parcel"], time_remaining_s=0.05)
        time.sleep(0.3)  # the deadline passes while the model is busy with the held request
        model.release.set()
        late.join(timeout=5)
        held.join(timeout=5)
        assert isinstance(late_out.get("error"), DeadlineExceeded), late_out
        assert "deadline passed" in str(late_out["error"])
        assert "where is my parcel" not in model.seen  # the model never worked for a caller who left
        assert _sample(dataplane, "edgekit_requests_total", backend="fake", status="deadline_exceeded") == 1
        assert _sample(dataplane, "edgekit_queued_texts") == 0
        # a request with time to spare still runs
        assert dataplane.classify(["where is my parcel"], time_remaining_s=5.0)[0].label == "track_order"
    finally:
        model.release.set()
        dataplane.close()


def test_a_request_whose_deadline_already_passed_is_not_run_even_on_an_idle_model():
    model = KeywordModel()
    dataplane = DataPlane(model)
    try:
        with pytest.raises(DeadlineExceeded):
            dataplane.classify(["cancel it"], time_remaining_s=0.0)
        assert model.seen == []
    finally:
        dataplane.close()


@pytest.mark.e2e
def test_grpc_answers_resource_exhausted_with_the_reason_and_keeps_serving():
    model = KeywordModel(hold_on="hold")
    with serving(model, limits=Limits(max_texts=2, max_queue=2)) as server:
        channel = grpc.insecure_channel(server.address)
        stub = ek_grpc.EdgeClassifierStub(channel)
        try:
            held, _ = _in_thread(stub.Classify, ek.ClassifyRequest(texts=["hold a", "hold b"]), timeout=10)
            assert model.entered.wait(5)
            error = _refused_at_once(lambda: stub.Classify(ek.ClassifyRequest(texts=["cancel it"]), timeout=10))
            assert isinstance(error, grpc.RpcError)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at capacity" in error.details()
            model.release.set()
            held.join(timeout=5)
            reply = stub.Classify(ek.ClassifyRequest(texts=["cancel it"]), timeout=10)
            assert reply.predictions[0].label == "cancel_order"
        finally:
            model.release.set()
            channel.close()


@pytest.mark.e2e
def test_grpc_refuses_rpcs_beyond_max_inflight_instead_of_queueing_them():
    model = KeywordModel(hold_on="hold")
    with serving(model, max_inflight_rpcs=1) as server:
        channel = grpc.insecure_channel(server.address)
        stub = ek_grpc.EdgeClassifierStub(channel)
        try:
            held, _ = _in_thread(stub.Classify, ek.ClassifyRequest(texts=["hold a"]), timeout=10)
            assert model.entered.wait(5)
            error = _refused_at_once(lambda: stub.Classify(ek.ClassifyRequest(texts=["cancel it"]), timeout=10))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 calls running or waiting for a thread, at most 1 (--max-inflight)" in error.details()
            assert _sample(server.dataplane, "edgekit_requests_total", backend="fake", status="overloaded") == 1
            health = health_pb2_grpc.HealthStub(channel)  # probes still get through a full server
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            model.release.set()
            held.join(timeout=5)
            assert stub.Classify(ek.ClassifyRequest(texts=["cancel it"]), timeout=10).predictions[0].label == "cancel_order"
        finally:
            model.release.set()
            channel.close()


@pytest.mark.e2e
def test_grpc_deadline_expired_in_the_queue_never_reaches_the_model():
    model = KeywordModel(hold_on="hold")
    with serving(model) as server:
        channel = grpc.insecure_channel(server.address)
        stub = ek_grpc.EdgeClassifierStub(channel)
        try:
            held, _ = _in_thread(stub.Classify, ek.ClassifyRequest(texts=["hold a"]), timeout=10)
            assert model.entered.wait(5)
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(ek.ClassifyRequest(texts=["where is my parcel"]), timeout=0.1)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            model.release.set()
            held.join(timeout=5)
            stub.Classify(ek.ClassifyRequest(texts=["cancel it"]), timeout=10)  # the queue has moved on
            assert "where is my parcel" not in model.seen
            assert "cancel it" in model.seen
        finally:
            model.release.set()
            channel.close()
