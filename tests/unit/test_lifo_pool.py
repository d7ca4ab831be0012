"""The server's worker pool: one warm thread at one client, LIFO hand-over, bounded threads, a
backlog in order, the in-flight count, errors in the future, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from edgekit.runtime.grpc.pool import LifoPool


def _until(condition, timeout_s: float = 5.0) -> None:
    """The pool counts a call finished just after its future completes: wait for the count."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _thread_name() -> str:
    return threading.current_thread().name


def test_calls_one_after_another_run_on_one_thread():
    """One client: each call waits for the last one, which is when ThreadPoolExecutor rotates threads."""
    pool = LifoPool(max_workers=16)
    try:
        names = {pool.submit(_thread_name).result(timeout=5) for _ in range(50)}
        assert len(names) == 1 and pool.threads == 1
    finally:
        pool.shutdown()


def test_the_thread_that_went_idle_last_takes_the_next_call():
    pool = LifoPool(max_workers=3)
    gates = [threading.Event() for _ in range(3)]
    started = threading.Barrier(4)

    def hold(i: int) -> str:
        started.wait(timeout=5)
        gates[i].wait(timeout=5)
        return _thread_name()

    try:
        calls = [pool.submit(hold, i) for i in range(3)]
        started.wait(timeout=5)  # three threads, each holding a call
        assert pool.threads == 3 and pool.held == 3
        names = []
        for i in range(3):  # finish them in order: the third thread goes idle last
            gates[i].set()
            names.append(calls[i].result(timeout=5))
            _until(lambda: pool.held == 2 - i)
        assert len(set(names)) == 3
        assert pool.submit(_thread_name).result(timeout=5) == names[2]
    finally:
        pool.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_at_most_max_workers_threads_and_the_rest_wait_in_order(workers):
    pool = LifoPool(max_workers=workers)
    release = threading.Event()
    order: list[int] = []

    def call(i: int) -> int:
        release.wait(timeout=5)
        order.append(i)
        return i

    try:
        calls = [pool.submit(call, i) for i in range(6)]
        assert pool.threads == workers and pool.held == 6
        release.set()
        assert [c.result(timeout=5) for c in calls] == list(range(6))
        if workers == 1:
            assert order == list(range(6))  # the backlog runs oldest first
        assert pool.threads == workers
        _until(lambda: pool.held == 0)
    finally:
        pool.shutdown()


def test_an_exception_is_the_futures_and_the_thread_lives_on():
    pool = LifoPool(max_workers=1)

    def fail() -> None:
        raise ValueError("boom")

    try:
        with pytest.raises(ValueError, match="boom"):
            pool.submit(fail).result(timeout=5)
        assert pool.submit(lambda: 7).result(timeout=5) == 7
        assert pool.threads == 1
    finally:
        pool.shutdown()


def test_done_callbacks_run_as_grpc_uses_them():
    pool = LifoPool(max_workers=2)
    seen = threading.Event()
    try:
        future = pool.submit(lambda: None)
        future.add_done_callback(lambda f: seen.set())
        assert seen.wait(timeout=5)
    finally:
        pool.shutdown()


def test_shutdown_ends_idle_threads_refuses_new_calls_and_can_cancel_the_backlog():
    pool = LifoPool(max_workers=1)
    release = threading.Event()
    running = pool.submit(release.wait, 5)
    waiting = pool.submit(lambda: "never")
    assert pool.held == 2
    release.set()
    running.result(timeout=5)
    waiting.result(timeout=5)
    pool.shutdown(wait=True)  # the idle thread is woken and exits; join returns
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)

    pool = LifoPool(max_workers=1)
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()
    assert first.result(timeout=5) is True
    _until(lambda: pool.held == 0)


def test_max_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        LifoPool(max_workers=0)
