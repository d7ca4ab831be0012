"""Bookkeeping after the response (runtime.deferred): queued inside a pool call, run in order once
it returns, at once outside one; the data plane's metrics wait for it (settle), so readers never
see fewer requests than callers received."""

from __future__ import annotations

import logging
import threading

from edgekit.runtime.deferred import defer, run_deferred, start_call
from edgekit.runtime.grpc.pool import LifoPool
from tests.fakes import KeywordModel
from tests.unit.test_dataplane import plane, sample


def test_outside_a_call_the_work_runs_at_once():
    done = []
    defer(done.append, 1)
    assert done == [1]


def test_inside_a_call_the_work_waits_for_the_end_and_runs_in_order(caplog):
    done = []

    def fail():
        raise ValueError("bookkeeping bug")

    start_call()
    try:
        defer(done.append, 1)
        defer(fail)
        defer(done.append, 2)
        assert done == []
    finally:
        with caplog.at_level(logging.ERROR):
            run_deferred()
    assert done == [1, 2]  # a failure is logged, never raised, and the rest runs
    assert "deferred_failed" in caplog.text
    defer(done.append, 3)  # the call is over: at once again
    assert done == [1, 2, 3]


def test_a_stream_runs_its_work_after_each_response_and_stays_open():
    done = []
    start_call()
    defer(done.append, "first")
    run_deferred(close=False)
    assert done == ["first"]
    defer(done.append, "second")
    assert done == ["first"]
    run_deferred()
    assert done == ["first", "second"]


def test_the_pool_runs_a_calls_work_after_it_returned():
    pool = LifoPool(max_workers=1)
    order = []

    def call():
        defer(order.append, "bookkeeping")
        order.append("response")
        return "answer"

    try:
        assert pool.submit(call).result(timeout=5) == "answer"
        assert pool.submit(lambda: None).result(timeout=5) is None  # same thread: the work ran before
        assert order == ["response", "bookkeeping"]
    finally:
        pool.shutdown()


def test_metrics_readers_wait_for_the_bookkeeping_of_answered_requests():
    dp = plane(model=KeywordModel())
    answered, release = threading.Event(), threading.Event()

    def pool_call():
        start_call()
        dp.classify(["where is my order"])
        answered.set()  # the caller has its answer; the bookkeeping has not run yet
        release.wait(timeout=5)
        run_deferred()

    worker = threading.Thread(target=pool_call)
    worker.start()
    assert answered.wait(timeout=5)
    counts = {}
    reader = threading.Thread(target=lambda: counts.update(dp.request_counts()))
    reader.start()
    reader.join(timeout=0.2)
    assert reader.is_alive()  # request_counts waits for the answered request's bookkeeping
    release.set()
    reader.join(timeout=5)
    worker.join(timeout=5)
    assert counts == {"ok": 1}
    # a scrape settles too: the registry's first collector waits
    assert sample(dp, "edgekit_requests_total", backend="fake", status="ok") == 1
