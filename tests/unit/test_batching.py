"""The micro-batcher merges concurrent requests, never splits one, and fails or stops cleanly."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgekit.errors import ConfigError
from edgekit.runtime.batching import BatchedModel, BatchSettings, MicroBatcher
from tests.fakes import KeywordModel


class Echo:
    """A batch function that records its batches; optionally blocks its first call until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        self.release.wait(5)
        return [t.upper() for t in texts]


def _wait_queued(batcher: MicroBatcher, n: int) -> None:
    """Wait (bounded) until n requests sit in the batcher's queue, so their order is known."""
    deadline = time.monotonic() + 2
    while batcher.queued() < n:
        assert time.monotonic() < deadline, "requests did not reach the queue"
        time.sleep(0.001)


def _queue_behind_a_held_call(pool, batcher, fn: Echo, first: list[str], rest: list[list[str]]):
    """Submit ``first`` (``fn`` holds its call), then ``rest`` while it is held; release ``fn`` once
    they all queue. Returns the futures of ``first`` and of ``rest``."""
    held = pool.submit(batcher.submit, first)
    assert fn.entered.wait(2)
    queued = [pool.submit(batcher.submit, texts) for texts in rest]
    _wait_queued(batcher, len(rest))
    fn.release.set()
    return held, queued


def test_disabled_batcher_calls_directly_in_the_callers_thread():
    fn, sizes = Echo(), []
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=1), on_batch=sizes.append)
    assert batcher.submit(["a", "b"]) == ["A", "B"]
    assert fn.threads == {threading.current_thread().name}
    assert sizes == [2]
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(["c"])


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    fn, sizes = Echo(), []
    # A long wait: the batch closes because it is full, not because time ran out.
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=4, max_wait_ms=2000), on_batch=sizes.append)
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: batcher.submit([t]), ["a", "b", "c", "d"]))
    assert time.monotonic() - start < 1.5
    assert results == [["A"], ["B"], ["C"], ["D"]]
    assert sizes == [4] and sorted(fn.batches[0]) == ["a", "b", "c", "d"]
    batcher.close()


def test_requests_are_never_split_and_overflow_waits_for_the_next_batch():
    fn = Echo(hold_first=True)
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=4, max_wait_ms=50))
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, ["blocker"])
        assert fn.entered.wait(2)  # the worker is busy: the next requests queue up in order
        big = pool.submit(batcher.submit, ["b1", "b2", "b3"])
        _wait_queued(batcher, 1)
        small = pool.submit(batcher.submit, ["s1", "s2"])
        _wait_queued(batcher, 2)
        huge = pool.submit(batcher.submit, [f"h{i}" for i in range(6)])
        _wait_queued(batcher, 3)
        fn.release.set()
        assert first.result(2) == ["BLOCKER"]
        assert big.result(2) == ["B1", "B2", "B3"]
        assert small.result(2) == ["S1", "S2"]
        assert huge.result(2) == [f"H{i}" for i in range(6)]
    assert [len(b) for b in fn.batches] == [1, 3, 2, 6]
    batcher.close()


def test_a_lone_request_waits_at_most_max_wait():
    fn = Echo()
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=8, max_wait_ms=20))
    start = time.monotonic()
    assert batcher.submit(["x"]) == ["X"]
    assert time.monotonic() - start < 0.5
    batcher.close()


def test_an_error_reaches_every_caller_of_the_batch_and_the_worker_survives():
    calls = []

    def explode(texts):
        calls.append(list(texts))
        if len(calls) == 1:
            raise ValueError("boom")
        return texts

    batcher = MicroBatcher(explode, BatchSettings(max_batch_size=2, max_wait_ms=2000))
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.submit, [t]) for t in ("a", "b")]
        for future in futures:
            with pytest.raises(ValueError, match="boom"):
                future.result(2)
    assert batcher.submit(["c", "d"]) == ["c", "d"]  # a full batch: no waiting
    batcher.close()


def test_wrong_row_count_is_an_error_not_a_silent_mismatch():
    batcher = MicroBatcher(lambda texts: texts[:-1], BatchSettings(max_batch_size=4, max_wait_ms=0))
    with pytest.raises(RuntimeError, match="returned 1 rows for 2 texts"):
        batcher.submit(["a", "b"])
    batcher.close()


def test_close_finishes_queued_requests_then_refuses():
    fn = Echo(hold_first=True)
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=2, max_wait_ms=0))
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(batcher.submit, ["a"])
        assert fn.entered.wait(2)
        queued = pool.submit(batcher.submit, ["b"])
        _wait_queued(batcher, 1)
        closing = pool.submit(batcher.close)
        time.sleep(0.05)
        assert not closing.done()  # close waits for the queued request
        with pytest.raises(RuntimeError, match="closed"):
            batcher.submit(["late"])  # ... but refuses new work at once
        fn.release.set()
        assert running.result(2) == ["A"] and queued.result(2) == ["B"]
        closing.result(2)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(["c"])
    batcher.close()  # idempotent


def test_an_idle_batcher_runs_a_lone_request_at_once_in_the_callers_thread():
    """No batching delay at low load (issue 12): the default never waits for company.

    Checked by counting waits on the batcher's condition: the old batcher (a worker thread
    waiting max_wait_ms = 2 for more requests) fails both asserts.
    """
    fn, sizes = Echo(), []
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=8), on_batch=sizes.append)
    waits = []
    real_wait = batcher._cond.wait
    batcher._cond.wait = lambda timeout=None: waits.append(timeout) or real_wait(timeout)
    assert batcher.submit(["x"]) == ["X"]
    assert fn.threads == {threading.current_thread().name} and sizes == [1]
    assert waits == []
    batcher.close()


def test_requests_that_arrive_while_the_model_is_busy_form_the_next_batch():
    fn, sizes = Echo(hold_first=True), []
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=8), on_batch=sizes.append)
    with ThreadPoolExecutor(6) as pool:
        first, rest = _queue_behind_a_held_call(pool, batcher, fn, ["first"], [[f"r{i}"] for i in range(5)])
        assert first.result(2) == ["FIRST"]
        assert [f.result(2) for f in rest] == [[f"R{i}"] for i in range(5)]
    assert sizes == [1, 5]  # the five queued during the first call ran as one
    batcher.close()


def test_batched_model_is_a_logit_model_with_the_same_answers():
    model = KeywordModel()
    batched = BatchedModel(model, BatchSettings(max_batch_size=4, max_wait_ms=1))
    texts = ["please cancel", "where is it", "refund please"]
    assert batched.info is model.info
    np.testing.assert_array_equal(batched.logits(texts), model.logits(texts))
    batched.close()
    assert not model.closed  # the model belongs to whoever made it


def test_settings_are_validated():
    with pytest.raises(ConfigError):
        BatchSettings(max_batch_size=-1)
    with pytest.raises(ConfigError):
        BatchSettings(max_wait_ms=-0.5)
    assert not BatchSettings(max_batch_size=1).enabled and BatchSettings(max_batch_size=2).enabled


def test_a_finished_batch_wakes_its_callers_only_and_one_engine_thread_runs_the_queue(monkeypatch):
    """After each batch only that batch's callers wake up, and the batches that queued behind a call
    run back to back on one engine thread: waking every waiter, or a waiter leading the next batch,
    made them contend for the lock and the GIL between two engine calls (issue 12). Six requests
    queue behind a held call and run in three batches of two, each batch 20 ms long (time for the
    others to wake): each caller sleeps once, and the engine thread sleeps only once the queue is
    empty. Checked to fail: with the notify_all of commit f9a958d's batcher the callers sleep 15
    times (every waiter re-sleeps after every batch)."""
    import edgekit.runtime.batching as batching

    sleeps = []

    class Counting(threading.Condition):
        def wait(self, timeout=None):
            sleeps.append(threading.current_thread().name)
            return super().wait(timeout)

    # the batcher's own conditions only (Event and the thread pool use threading.Condition too)
    monkeypatch.setattr(batching, "threading",
                        SimpleNamespace(Lock=threading.Lock, Condition=Counting, Thread=threading.Thread))
    fn = Echo(hold_first=True)

    def slow(texts):
        rows = fn(texts)
        time.sleep(0.02)  # releases the GIL: the other waiters run meanwhile
        return rows

    batcher = MicroBatcher(slow, BatchSettings(max_batch_size=2), name="the-engine")
    with ThreadPoolExecutor(7, thread_name_prefix="caller") as pool:
        first, rest = _queue_behind_a_held_call(pool, batcher, fn, ["a"], [[f"t{i}"] for i in range(6)])
        assert [f.result(5) for f in rest] == [[f"T{i}"] for i in range(6)] and first.result(5) == ["A"]
    assert fn.batches == [["a"], ["t0", "t1"], ["t2", "t3"], ["t4", "t5"]]
    assert fn.threads == {"caller_0", "the-engine"}  # the idle model ran "a" in its caller's thread
    callers = [name for name in sleeps if name != "the-engine"]
    assert len(callers) == 6, sleeps
    assert sleeps.count("the-engine") <= 1, sleeps  # asleep only with nothing queued
    batcher.close()


def test_the_engine_thread_ends_when_idle_and_a_new_one_serves_the_next_queue(monkeypatch):
    import edgekit.runtime.batching as batching

    monkeypatch.setattr(batching, "_ENGINE_IDLE_S", 0.05)
    fn = Echo(hold_first=True)
    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=4), name="idle-engine")
    with ThreadPoolExecutor(2) as pool:
        first, rest = _queue_behind_a_held_call(pool, batcher, fn, ["a"], [["b"]])
        assert first.result(2) == ["A"] and rest[0].result(2) == ["B"]
        engine = batcher._engine
        assert engine is not None
        engine.join(2)
        assert not engine.is_alive() and batcher._engine is None  # idle 50 ms: gone
        fn.entered.clear()
        fn.release.clear()
        first, rest = _queue_behind_a_held_call(pool, batcher, fn, ["c"], [["d"]])
        assert first.result(2) == ["C"] and rest[0].result(2) == ["D"]
    assert fn.batches == [["a"], ["b"], ["c"], ["d"]]
    batcher.close()


def test_batched_model_tokenizes_in_the_callers_thread_and_batches_only_the_engine_call():
    """A model with encode/run_encoded (BundleModel) is tokenized by each caller before it queues,
    so tokenizing never stands between two engine calls (issue 12)."""
    calls = []

    class Split(KeywordModel):
        def encode(self, texts):
            calls.append(("encode", threading.current_thread().name, list(texts)))
            return [("enc", t) for t in texts]

        def run_encoded(self, rows):
            calls.append(("run", threading.current_thread().name, list(rows)))
            return KeywordModel.logits(self, [t for _, t in rows])

    model = Split()
    batched = BatchedModel(model, BatchSettings(max_batch_size=4))
    texts = ["please cancel", "where is it"]
    np.testing.assert_array_equal(batched.logits(texts), KeywordModel().logits(texts))
    me = threading.current_thread().name
    assert calls == [("encode", me, texts), ("run", me, [("enc", t) for t in texts])]
    batched.close()
