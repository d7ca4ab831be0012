"""Cloud faults (issue 13, point 2): the cloud down, slower than the deadline, answering errors,
flapping, or answering garbage (a wrong number of answers, labels the bundle does not know,
scores that are not probabilities). Every request is still answered with the right route,
the breaker opens and half-opens as configured, and nothing leaks over thousands of calls.

The cloud is a real gRPC server (an ``edgekit.v1.EdgeClassifier`` whose behaviour a test
switches), the edge a real ``EdgeServer`` with the edgekit cloud client.

How each test was checked to fail: without the label/score check in ``cascade._call`` the
garbage answers come back as route CLOUD with unknown labels; with ``CircuitBreaker.allow``
always True the cloud keeps being called while the breaker should be open; the leak test fails
when the cloud client opens a channel per call (file descriptors grow by one per call).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from edgekit.runtime.cascade import CascadeSettings
from edgekit.runtime.client import EdgeClient
from edgekit.runtime.cloud import EdgekitCloudClient
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.types import Route
from tests.fakes import UNSURE, KeywordModel, serving

pytestmark = pytest.mark.e2e

UNSURE_TEXT = next(iter(UNSURE))  # the edge is unsure and wrong; the cloud is asked


class MoodyCloud(ek_grpc.EdgeClassifierServicer):
    """A cloud model whose behaviour the test sets: ok, down, slow, error, or a kind of garbage."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

    def Classify(self, request, context):
        self.calls += 1
        n = len(request.texts)
        mode = self.mode
        if mode == "down":
            context.abort(grpc.StatusCode.UNAVAILABLE, "cloud is down")
        if mode == "error":
            context.abort(grpc.StatusCode.INTERNAL, "cloud bug")
        if mode == "slow":
            time.sleep(0.5)
        if mode == "too_few":
            n = max(0, n - 1)
        label = {"unknown_label": "buy_a_boat"}.get(mode, "get_refund")
        score = {"bad_score": 7.5, "nan_score": float("nan")}.get(mode, 0.97)
        return ek.ClassifyResponse(predictions=[ek.Prediction(label=label, score=score) for _ in range(n)])


@pytest.fixture()
def cloud():
    servicer = MoodyCloud()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ek_grpc.add_EdgeClassifierServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    server.stop(0)


def _edge(cloud: MoodyCloud, **settings):
    cascade = CascadeSettings(cloud_timeout_ms=150, **settings)
    return serving(KeywordModel(), cloud=EdgekitCloudClient(cloud.address), cascade=cascade)


@pytest.mark.parametrize("mode", ["down", "slow", "error", "too_few", "unknown_label", "bad_score", "nan_score"])
def test_every_cloud_fault_still_gets_the_edge_answer_with_its_route(cloud, mode):
    with _edge(cloud, breaker_failures=1000) as server, EdgeClient(server.address, timeout_s=5) as client:
        cloud.mode = "ok"
        [ok] = client.classify([UNSURE_TEXT])
        assert (ok.route, ok.label) == (Route.CLOUD, "get_refund")
        cloud.mode = mode
        started = time.monotonic()
        [p] = client.classify([UNSURE_TEXT])
        assert p.route is Route.EDGE_CLOUD_FAILED and p.label in KeywordModel().info.labels
        assert p.label != "buy_a_boat" and 0.0 <= p.score <= 1.0
        assert time.monotonic() - started < 1.0  # the slow cloud was cut off at its 150 ms deadline


def test_the_breaker_opens_after_the_configured_failures_then_half_opens(cloud):
    with _edge(cloud, breaker_failures=3, breaker_cooldown_s=0.3) as server, \
            EdgeClient(server.address, timeout_s=5) as client:
        cloud.mode = "down"
        for _ in range(3):
            assert client.classify([UNSURE_TEXT])[0].route is Route.EDGE_CLOUD_FAILED
        assert cloud.calls == 3
        for _ in range(5):  # open: the cloud is not called at all
            assert client.classify([UNSURE_TEXT])[0].route is Route.EDGE_CLOUD_FAILED
        assert cloud.calls == 3
        time.sleep(0.35)
        cloud.mode = "ok"  # half-open: one trial call, which succeeds and closes the breaker
        assert client.classify([UNSURE_TEXT])[0].route is Route.CLOUD
        assert cloud.calls == 4
        assert client.classify([UNSURE_TEXT])[0].route is Route.CLOUD
        registry = server.dataplane.registry
        assert registry.get_sample_value("edgekit_cloud_skipped_total", {"reason": "breaker_open"}) == 5
        assert registry.get_sample_value("edgekit_cloud_breaker_open") == 0


def _threads() -> int:
    """Live threads, not counting micro-batcher engine threads: at most one per batcher, started the
    first time a request queues and ended after 30 s idle (runtime.batching), which is no leak."""
    return sum(not t.name.startswith("edgekit-batcher") for t in threading.enumerate())


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_thousands_of_calls_against_a_flapping_cloud_answer_everything_and_leak_nothing(cloud):
    modes = ["ok", "down", "ok", "error", "unknown_label", "ok", "too_few", "nan_score"]
    with _edge(cloud, breaker_failures=3, breaker_cooldown_s=0.05) as server:
        clients = [EdgeClient(server.address, timeout_s=5) for _ in range(4)]

        def hammer(client: EdgeClient, calls: int, routes: list) -> None:
            for i in range(calls):
                routes.append(client.classify([UNSURE_TEXT, "please cancel my order"])[0].route)

        def round_(calls: int) -> list:
            routes: list = []
            threads = [threading.Thread(target=hammer, args=(c, calls, routes)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            return routes

        def flapping(rounds: int) -> list:
            routes = []
            for r in range(rounds):
                cloud.mode = modes[r % len(modes)]
                routes += round_(25)
            return routes

        flapping(8)  # warm-up: every code path once
        threads, fds, rss = _threads(), _fds(), _rss_kb()
        routes = flapping(24)  # 24 x 4 clients x 25 = 2,400 requests, 4,800 texts
        assert len(routes) == 2400
        assert set(routes) <= {Route.CLOUD, Route.EDGE_CLOUD_FAILED} and Route.CLOUD in routes
        assert _threads() <= threads + 2  # gRPC's pollers may come and go
        assert _fds() <= fds + 8
        assert _rss_kb() < rss * 1.10
        for c in clients:
            c.close()
