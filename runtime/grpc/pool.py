"""The gRPC server's worker pool: the thread that went idle last takes the next call (LIFO).

Hand-written because no library offers it in Python (folly's ``LifoSem`` does this in C++, for
the same reason). ``concurrent.futures.ThreadPoolExecutor`` is the wrong shape for a server whose
calls each run a model on the calling thread:

* it starts a new thread whenever a call arrives before the previous call's thread has marked
  itself idle, and at one client that is every call (gRPC sends the response from inside the
  work item, so the client's next call can arrive before the item returns): the pool grows to
  ``max_workers`` threads at the first calls;
* its idle threads wait on one queue and wake in turn, so consecutive calls rotate over all of
  them, each running the model, tokenizer and handler on a thread whose stack and per-thread
  buffers have gone cold.

Measured on the banking77 ``onnx-int8`` bundle at one client (issue 12): the same bare model
server answered 0.06-0.09 ms faster at p50 with one worker thread than with sixteen. Here the
thread that finished last (its caches the warmest) takes the next call, a new thread starts
only when every thread is busy, and calls beyond ``max_workers`` wait in order. Once a call has
returned (gRPC has handed its response to the transport), the worker runs what the call deferred
(:mod:`edgekit.runtime.deferred`: metrics, the drift window) before it takes another call.

:attr:`LifoPool.held` counts the calls submitted and not yet finished (running or waiting for
a thread): the server's in-flight bound (:class:`~edgekit.runtime.grpc.servicers.Admission`)
reads it, with the fast lane's own count (:mod:`edgekit.runtime.grpc.lane`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent import futures
from typing import Any

from edgekit.runtime.deferred import run_deferred, start_call

__all__ = ["LifoPool"]

_Item = tuple[futures.Future, Callable[..., Any], tuple, dict]


class _Worker:
    """One thread's mailbox: ``wake`` is held while the thread sleeps; releasing it hands over ``item``."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.item: _Item | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


class LifoPool(futures.Executor):
    """At most ``max_workers`` daemon threads; the last one to go idle runs the next call."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "edgekit-grpc") -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # a stack: the top went idle last
        self._backlog: deque[_Item] = deque()  # calls waiting while every thread is busy
        self._threads: list[threading.Thread] = []
        self._held = 0
        self._finishing = 0  # threads whose call has returned, on their way to the idle stack
        self._shutdown = False

    @property
    def held(self) -> int:
        """Calls submitted and not finished (running or waiting for a thread)."""
        return self._held

    @property
    def threads(self) -> int:
        return len(self._threads)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        future: futures.Future = futures.Future()
        item = (future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._held += 1
            if self._idle:
                worker = self._idle.pop()
                worker.item = item
                worker.wake.release()
            elif self._finishing:  # a warm thread is a few lines from idle: it takes this next
                self._backlog.append(item)
            elif len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, args=(_Worker(), item), daemon=True,
                                          name=f"{self._prefix}_{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
            else:
                self._backlog.append(item)
        return future

    def _work(self, worker: _Worker, item: _Item | None) -> None:
        while item is not None:
            future, fn, args, kwargs = item
            item = None  # hold no reference to a finished call's arguments while asleep
            running = future.set_running_or_notify_cancel()
            result = error = None
            if running:
                start_call()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # as ThreadPoolExecutor: the future carries it
                    error = exc
                run_deferred()  # the response is on its way: now the call's bookkeeping
            self._finished()
            if running and error is None:
                future.set_result(result)
            elif running:
                future.set_exception(error)
            del future, fn, args, kwargs, result, error
            item = self._next(worker)

    def _finished(self) -> None:
        # before the future completes (its waiter may submit the next call at once) and before
        # the done callbacks (gRPC's takes the server's lock, which its polling thread may hold)
        with self._lock:
            self._finishing += 1

    def _next(self, worker: _Worker) -> _Item | None:
        """The next call for this thread: the backlog's oldest, or whatever wakes it; None to exit."""
        with self._lock:
            self._held -= 1
            self._finishing -= 1
            if self._backlog:
                return self._backlog.popleft()
            if self._shutdown:
                return None
            self._idle.append(worker)
        worker.wake.acquire()  # until submit() or shutdown() releases it
        return worker.item

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            idle, self._idle = self._idle, []
            if cancel_futures:
                while self._backlog:
                    future = self._backlog.popleft()[0]
                    future.cancel()
                    self._held -= 1
            threads = list(self._threads)
        for worker in idle:
            worker.item = None
            worker.wake.release()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
