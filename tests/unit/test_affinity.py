"""serve --engine-cpus: CPU lists parsed as taskset writes them, checked against the CPUs this
process may use, and the batcher's engine thread pinned to them."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgekit.errors import ConfigError
from edgekit.runtime.affinity import parse_cpu_list, pinned, split_cpus, worker_cpus
from edgekit.runtime.batching import BatchSettings, MicroBatcher

linux = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
two_cpus = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                              reason="needs at least 2 CPUs available to this process")


@pytest.mark.parametrize(("text", "cpus"), [("1", {1}), ("2,3", {2, 3}), ("0-3", {0, 1, 2, 3}),
                                            ("0, 2-3", {0, 2, 3}), ("5-5", {5})])
def test_cpu_lists_are_read_as_taskset_writes_them(text, cpus):
    assert parse_cpu_list(text) == frozenset(cpus)


@pytest.mark.parametrize("text", ["", "a", "1,,2", "3-1", "1-", "-1", "1.5"])
def test_a_bad_cpu_list_is_a_config_error(text):
    with pytest.raises(ConfigError, match="--engine-cpus"):
        parse_cpu_list(text)


@linux
def test_cpus_must_be_available_and_leave_some_for_the_rest():
    allowed = frozenset(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="not available to this process"):
        split_cpus(frozenset({max(allowed) + 1000}))
    with pytest.raises(ConfigError, match="leaves no CPU for the server's other threads"):
        split_cpus(allowed)


@linux
@two_cpus
@pytest.mark.parametrize(("cpus", "workers", "groups"), [
    ({2, 3, 4, 5}, 2, [{2, 3}, {4, 5}]), ({1, 2, 3}, 2, [{1, 2}, {3}]), ({0, 5, 7}, 3, [{0}, {5}, {7}]),
])
def test_workers_get_groups_of_consecutive_engine_cpus(cpus, workers, groups):
    assert worker_cpus(frozenset(cpus), workers) == [frozenset(g) for g in groups]


def test_fewer_engine_cpus_than_workers_is_a_config_error():
    with pytest.raises(ConfigError, match="names 1 CPU"):
        worker_cpus(frozenset({3}), 2)


def test_the_other_threads_keep_off_every_workers_engine(monkeypatch):
    """A worker's own engine on CPU 2; the rest avoids CPU 3 as well, the other worker's engine."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: None, raising=False)
    assert split_cpus(frozenset({2}), reserved=frozenset({2, 3})) == ({2}, {0, 1})
    assert split_cpus(frozenset({2})) == ({2}, {0, 1, 3})
    with pytest.raises(ConfigError, match="leaves no CPU"):
        split_cpus(frozenset({2}), reserved=frozenset({0, 1, 2, 3}))


def test_the_engine_thread_runs_on_the_engine_cpus_and_pinned_restores_the_caller():
    allowed = frozenset(os.sched_getaffinity(0))
    engine, rest = split_cpus(frozenset({max(allowed)}))
    assert rest == allowed - engine
    seen: dict[str, frozenset[int]] = {}
    release, entered = threading.Event(), threading.Event()

    def fn(items):
        seen[threading.current_thread().name] = frozenset(os.sched_getaffinity(0))
        if items == ["first"]:
            entered.set()
            release.wait(5)
        return items

    batcher = MicroBatcher(fn, BatchSettings(max_batch_size=4, engine_cpus=engine), name="pinned-engine")
    with ThreadPoolExecutor(3, thread_name_prefix="caller") as pool:
        first = pool.submit(batcher.submit, ["first"])
        assert entered.wait(2)
        queued = [pool.submit(batcher.submit, [t]) for t in ("a", "b")]
        deadline = time.monotonic() + 2
        while batcher.queued() < 2:
            assert time.monotonic() < deadline, "requests did not reach the queue"
            time.sleep(0.001)
        release.set()
        assert first.result(2) == ["first"] and [f.result(2) for f in queued] == [["a"], ["b"]]
    batcher.close()
    assert seen["pinned-engine"] == engine  # the queued batch ran on the engine's CPUs
    assert seen["caller_0"] == allowed  # the lone request ran in its caller's thread, unpinned here
    with pinned(engine):
        assert frozenset(os.sched_getaffinity(0)) == engine
    assert frozenset(os.sched_getaffinity(0)) == allowed
