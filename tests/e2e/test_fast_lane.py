"""The fast lane (issue 12, session 14): Classify and ModelInfer served from gRPC's completion queue.

A lone call runs on the lane's thread that received it (no hand-over to a pool thread), a call
that arrives while another runs goes to the worker pool, and every answer (success, bad input,
malformed bytes, a model bug, a missing or wrong token, an unknown model, the in-flight bound)
is the same, code and details, as grpcio's own path gives with ``fast_lane=False``; a call the client
cancelled while it waited for a thread is not run, and a call still running when the server's grace
ends finishes without touching the closed queue.

How each test was checked to fail: with ``FastLane._received`` always handing calls to the pool,
the lone-call and busy tests see pool threads; with the hand-over removed (every call run by the
poller that received it), the busy test sees a lane thread for the second call; with the lane's
error statuses replaced by INTERNAL, or its token check dropped, the parity test differs; without
the cancelled check in ``FastLane._run`` the cancelled text reaches the model; without the closed
check in ``FastLane._start`` the grace-period test's process aborts (gRPC's C core: a batch started
on a shut-down queue).
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc
from edgekit.runtime.grpc.lane import LANE_METHODS, lane_available
from edgekit.runtime.security import Security
from tests.fakes import KeywordModel, serving

TOKEN = "lane-token-for-tests"


def _threads_of_classify(server) -> list[str]:
    """Record the thread each data-plane call runs on (the servicer's thread)."""
    names: list[str] = []
    classify = server.dataplane.classify

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return classify(*args, **kwargs)

    server.dataplane.classify = recording
    return names


def _v2_request(text: str, model_name: str = "fake-edge") -> v2.ModelInferRequest:
    tensor = v2.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[1], contents=v2.InferTensorContents(bytes_contents=[text.encode()]))
    return v2.ModelInferRequest(model_name=model_name, inputs=[tensor])


def test_the_lane_serves_the_two_unary_classify_methods_on_this_grpcio():
    assert lane_available() is None, lane_available()  # a grpcio upgrade that breaks the lane fails here
    assert LANE_METHODS == {"/edgekit.v1.EdgeClassifier/Classify", "/inference.GRPCInferenceService/ModelInfer"}


def test_a_lone_call_runs_on_the_lane_thread_that_received_it():
    with serving(KeywordModel()) as server:
        names = _threads_of_classify(server)
        with grpc.insecure_channel(server.address) as channel:
            stub, infer = ek_grpc.EdgeClassifierStub(channel), v2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3):
                assert stub.Classify(ek.ClassifyRequest(texts=["where is my package"]), timeout=5).predictions
            assert infer.ModelInfer(_v2_request("cancel my order"), timeout=5).outputs
            lone = list(names)
            list(stub.ClassifyStream(iter([ek.ClassifyRequest(texts=["where is my package"])]), timeout=5))
            assert stub.GetModelInfo(ek.GetModelInfoRequest(), timeout=5).name == "fake-edge"  # not on the lane
    assert len(lone) == 4 and all(name.startswith("edgekit-lane_") for name in lone), lone
    assert names[4].startswith("edgekit-grpc_"), names  # a stream stays on grpcio's path


def test_with_the_lane_off_every_call_runs_on_a_pool_thread():
    with serving(KeywordModel(), fast_lane=False) as server:
        names = _threads_of_classify(server)
        with grpc.insecure_channel(server.address) as channel:
            ek_grpc.EdgeClassifierStub(channel).Classify(ek.ClassifyRequest(texts=["where is my package"]), timeout=5)
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_v2_request("cancel my order"), timeout=5)
    assert len(names) == 2 and all(name.startswith("edgekit-grpc_") for name in names), names


def test_a_call_that_arrives_while_one_runs_goes_to_the_pool_and_both_answer():
    model = KeywordModel(hold_on="hold")
    with serving(model) as server:
        names = _threads_of_classify(server)
        with grpc.insecure_channel(server.address) as channel:
            stub = ek_grpc.EdgeClassifierStub(channel)
            first = stub.Classify.future(ek.ClassifyRequest(texts=["hold: where is my package"]), timeout=10)
            assert model.entered.wait(5)
            second = stub.Classify.future(ek.ClassifyRequest(texts=["cancel my order"]), timeout=10)
            for _ in range(200):  # until the second call reached the data plane (it then queues for the model)
                if len(names) == 2:
                    break
                threading.Event().wait(0.01)
            model.release.set()
            assert first.result().predictions[0].label == "track_order"
            assert second.result().predictions[0].label == "cancel_order"
    assert names[0].startswith("edgekit-lane_") and names[1].startswith("edgekit-grpc_"), names


def _outcome(call) -> tuple[str, str]:
    try:
        response = call()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", str(response.predictions[0].label if hasattr(response, "predictions") else response.model_name)


def _outcomes(tmp_path: Path, fast_lane: bool) -> list[tuple[str, str]]:
    tokens = tmp_path / f"tokens-{fast_lane}"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    model = KeywordModel(fail_on="explode")
    good = (("authorization", f"Bearer {TOKEN}"),)
    with serving(model, fast_lane=fast_lane, security=Security(token_file=tokens)) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub, infer = ek_grpc.EdgeClassifierStub(channel), v2_grpc.GRPCInferenceServiceStub(channel)
            raw = channel.unary_unary("/edgekit.v1.EdgeClassifier/Classify")
            classify = stub.Classify
            return [
                _outcome(lambda: classify(ek.ClassifyRequest(texts=["where is my package"]), metadata=good, timeout=5)),
                _outcome(lambda: classify(ek.ClassifyRequest(texts=[]), metadata=good, timeout=5)),
                _outcome(lambda: classify(ek.ClassifyRequest(texts=["x" * 10_000]), metadata=good, timeout=5)),
                _outcome(lambda: classify(ek.ClassifyRequest(texts=["a"], threshold=2.0), metadata=good, timeout=5)),
                _outcome(lambda: raw(b"\xff\xff\xff", metadata=good, timeout=5)),
                _outcome(lambda: classify(ek.ClassifyRequest(texts=["explode"]), metadata=good, timeout=5)),
                _outcome(lambda: classify(ek.ClassifyRequest(texts=["where is my package"]), timeout=5)),
                _outcome(lambda: classify(ek.ClassifyRequest(texts=["where is my package"]),
                                          metadata=(("authorization", "Bearer wrong"),), timeout=5)),
                _outcome(lambda: infer.ModelInfer(_v2_request("cancel my order"), metadata=good, timeout=5)),
                _outcome(lambda: infer.ModelInfer(_v2_request("cancel", model_name="other"), metadata=good, timeout=5)),
                _outcome(lambda: infer.ModelInfer(_v2_request("cancel my order"), timeout=5)),
            ]


def test_the_lane_answers_every_case_as_grpcios_path_does(tmp_path):
    lane, standard = _outcomes(tmp_path, True), _outcomes(tmp_path, False)
    assert lane == standard
    codes = [code for code, _ in lane]
    assert codes == ["OK", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                     "INTERNAL", "UNAUTHENTICATED", "UNAUTHENTICATED", "OK", "NOT_FOUND", "UNAUTHENTICATED"], lane
    assert lane[0] == ("OK", "track_order") and "malformed request message (3 bytes)" in lane[4][1]
    assert lane[5][1] == "internal error; see the server log" and "missing bearer token" in lane[6][1]


@pytest.mark.parametrize("fast_lane", [True, False], ids=["lane", "standard"])
def test_the_in_flight_bound_counts_calls_on_both_paths(fast_lane):
    model = KeywordModel(hold_on="hold")
    with serving(model, max_inflight_rpcs=2, fast_lane=fast_lane) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = ek_grpc.EdgeClassifierStub(channel)
            infer = v2_grpc.GRPCInferenceServiceStub(channel)
            first = stub.Classify.future(ek.ClassifyRequest(texts=["hold a"]), timeout=10)
            assert model.entered.wait(5)
            stream = stub.ClassifyStream(iter([ek.ClassifyRequest(texts=["hold b"])]), timeout=10)  # the pool's
            for _ in range(200):
                if server._held_calls() == 2:
                    break
                threading.Event().wait(0.01)
            with pytest.raises(grpc.RpcError) as refused:
                infer.ModelInfer(_v2_request("cancel my order"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 calls running or waiting for a thread, at most 2" in refused.value.details()
            model.release.set()
            assert first.result().predictions and list(stream)
            assert infer.ModelInfer(_v2_request("cancel my order"), timeout=5).outputs


def _stop_during_a_held_call(server, channel, model, grace_s: float):
    """A lone call held in the model, then ``server.stop(grace_s)`` started in a thread: (call, thread)."""
    call = ek_grpc.EdgeClassifierStub(channel).Classify.future(
        ek.ClassifyRequest(texts=["hold: where is my package"]), timeout=20)
    assert model.entered.wait(5)
    stopping = threading.Thread(target=server.stop, kwargs={"grace_s": grace_s})
    stopping.start()
    return call, stopping


def test_stop_lets_a_running_lane_call_finish():
    model = KeywordModel(hold_on="hold")
    with serving(model) as server:
        with grpc.insecure_channel(server.address) as channel:
            call, stopping = _stop_during_a_held_call(server, channel, model, grace_s=5.0)
            threading.Event().wait(0.2)
            model.release.set()
            assert call.result().predictions[0].label == "track_order"
            stopping.join(10)
            assert not stopping.is_alive()
    assert not any(t.name.startswith("edgekit-lane_") for t in threading.enumerate())


def _until(condition, timeout_s: float = 5.0) -> bool:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return True
        threading.Event().wait(0.01)
    return condition()


def test_a_call_the_client_gave_up_on_is_counted_out_and_the_lane_serves_on():
    model = KeywordModel(hold_on="hold")
    with serving(model) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = ek_grpc.EdgeClassifierStub(channel)
            with pytest.raises(grpc.RpcError) as gone:
                stub.Classify(ek.ClassifyRequest(texts=["hold: where is my package"]), timeout=0.3)
            assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            model.release.set()
            assert _until(lambda: server._held_calls() == 0), server._held_calls()
            for _ in range(20):
                assert stub.Classify(ek.ClassifyRequest(texts=["cancel my order"]), timeout=5).predictions
            assert _until(lambda: server._held_calls() == 0), server._held_calls()  # no call left counted in


def test_a_call_still_running_after_the_grace_period_ends_without_crashing_the_server():
    """The server cancels a call past its grace and closes the lane's queue; when the call's model
    returns, its answer must not be started on the closed queue (gRPC's C core aborts the process
    then: this test's process would die with SIGABRT)."""
    model = KeywordModel(hold_on="hold")
    with serving(model) as server:
        with grpc.insecure_channel(server.address) as channel:
            call, stopping = _stop_during_a_held_call(server, channel, model, grace_s=0.2)
            assert _until(lambda: server._lane._closed, timeout_s=10)  # the queue is closed under the call
            model.release.set()  # now the call answers
            stopping.join(10)
            assert not stopping.is_alive()
            with pytest.raises(grpc.RpcError):
                call.result()  # cancelled by the server at the end of its grace
    threading.Event().wait(0.2)
    assert not any(t.name.startswith("edgekit-lane_") for t in threading.enumerate())


def test_a_call_the_client_cancelled_while_it_waited_for_a_thread_is_not_run():
    """As grpcio's path: a call cancelled before a worker thread took it never reaches the model."""
    model = KeywordModel(hold_on="hold")
    with serving(model, max_workers=1) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = ek_grpc.EdgeClassifierStub(channel)
            first = stub.Classify.future(ek.ClassifyRequest(texts=["hold: where is my package"]), timeout=10)
            assert model.entered.wait(5)  # on a lane thread
            second = stub.Classify.future(ek.ClassifyRequest(texts=["cancel my order"]), timeout=10)  # the one worker
            assert _until(lambda: server._pool.held == 1)
            third = stub.Classify.future(ek.ClassifyRequest(texts=["refund please, third"]), timeout=10)
            assert _until(lambda: server._pool.held == 2)  # waiting for the busy worker
            third.cancel()
            threading.Event().wait(0.3)  # the cancel reaches the server
            model.release.set()
            assert first.result().predictions and second.result().predictions
            assert _until(lambda: server._held_calls() == 0)
    assert not any("third" in text for text in model.seen), model.seen
