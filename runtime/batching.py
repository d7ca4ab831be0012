"""Micro-batching: merge the texts of concurrent requests into one model call, without waiting.

A transformer on a CPU costs little more for 8 texts than for 1, so under concurrent load it
pays to run neighbours together. The batching here is *opportunistic* (Triton's dynamic batcher
with no queue delay): a request that finds the model idle runs at once, in its caller's thread,
alone; requests that arrive while the model is busy queue up, and when the model comes free an
engine thread takes every queued request (up to ``max_batch_size`` texts) and runs them as one
call, then the next batch, until the queue is empty. A lone kiosk query therefore never waits
for company that will not come (issue 12: the old 2 ms wait cost 2.6 ms per call at one client),
and under load batches form by themselves from what piled up during the previous call.

``max_wait_ms > 0`` restores the old trade-off for users who want it: every request queues, and
the engine waits up to that long (since the batch's first request arrived) for the batch to fill
before running it.

Requests are never split: a request with more texts than ``max_batch_size`` runs as a batch of
its own, and a request that would overflow the current batch waits for the next one. With
``max_batch_size <= 1`` every caller calls the function directly.

:class:`BatchedModel` puts a batcher in front of a :class:`~edgekit.runtime.types.LogitModel`
and is itself a LogitModel, so the cascade does not know whether batching is on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from edgekit.errors import ConfigError, DeadlineExceeded
from edgekit.runtime.affinity import pin_thread

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgekit.runtime.types import LogitModel, ModelInfo

__all__ = ["BatchSettings", "BatchedModel", "MicroBatcher"]

log = logging.getLogger(__name__)

# an engine thread idle this long ends; the next queued request starts another (a batcher that is
# dropped without close() then leaves no thread behind)
_ENGINE_IDLE_S = 30.0


@dataclass(frozen=True)
class BatchSettings:
    """How big a batch may grow, and how long a request may wait for company (0: never)."""

    max_batch_size: int = 8
    max_wait_ms: float = 0.0
    # the engine thread runs on these CPUs only (serve --engine-cpus; runtime.affinity); None: anywhere
    engine_cpus: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


@dataclass
class _Pending:
    items: Sequence[Any]  # one per text (the text, or what the caller prepared from it)
    wake: threading.Condition  # on the batcher's lock: its caller sleeps here, woken alone
    deadline: float | None = None  # time.monotonic() past which the caller no longer waits
    arrived: float = field(default_factory=time.monotonic)
    done: bool = False
    rows: Any = None
    error: BaseException | None = None


class _Rows(Protocol):
    """What a batch function returns: one row per text, sliceable (an ndarray or a list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Any: ...


R = TypeVar("R", bound=_Rows)


class MicroBatcher(Generic[R]):
    """Run ``fn`` for concurrent ``submit`` calls, merging those that queue while ``fn`` is busy.

    ``fn`` must return one row per input item (a text, or whatever the caller prepared from one).
    ``on_batch`` is told the size of every batch ``fn`` runs on, and ``on_run`` the seconds each
    call of ``fn`` took (for metrics), with batching on or off. A request that finds the model idle
    runs in its caller's thread; requests that queue while the model is busy are run, batch after
    batch, by one engine thread (started on first need), which hands every caller its rows.

    Why an engine thread, not the first queued caller leading the next batch (this class until
    session 11): under load every batch then started with a thread waking up and winning the GIL
    against the callers the last batch had just woken; a server profile at 16 clients had the model
    idle 17% of the time between batches, about 1 ms per gap (issue 12). The engine thread takes the
    next batch before it wakes the last one's callers, and is the thread that already runs.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], R],
        settings: BatchSettings = BatchSettings(),
        *,
        on_batch: Callable[[int], None] | None = None,
        on_run: Callable[[float], None] | None = None,
        name: str = "edgekit-batcher",
    ) -> None:
        self._fn = fn
        self._settings = settings
        self._on_batch = on_batch
        self._on_run = on_run
        self.name = name
        self._lock = threading.Lock()
        # the lone request's path takes ``_lock`` itself: the condition's ``with`` adds two Python
        # calls per use, each a few us on the caches a model call has just flushed (issue 12)
        self._cond = threading.Condition(self._lock)  # close() and a batch waiting for company
        self._work = threading.Condition(self._lock)  # the engine thread sleeps here
        self._queue: deque[_Pending] = deque()
        self._busy = False
        self._closed = False
        self._engine: threading.Thread | None = None
        self._engine_sleeps = False
        self._running = 0  # calls in progress with batching off (see _call_overlapping)
        self._running_since = 0.0

    def submit(self, items: Sequence[Any], deadline: float | None = None) -> R:
        """Run ``fn`` on ``items``, possibly together with other callers' items; block for the rows.

        ``deadline`` (a ``time.monotonic()`` value): if it passes while the request waits for
        the model, the request is dropped unrun and raises :class:`DeadlineExceeded`, so the
        model never works for a caller who already left.
        """
        if not self._settings.enabled:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            _check_deadline(deadline, time.monotonic())
            return self._call(list(items)) if self._on_run is None else self._call_overlapping(list(items))
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            alone = not self._busy and not self._queue and self._settings.max_wait_ms <= 0
            if alone:
                _check_deadline(deadline, time.monotonic())
                self._busy = True  # the model is idle and nobody queues: run at once, no bookkeeping
            else:
                pending = _Pending(items, threading.Condition(self._lock), deadline)
                self._queue.append(pending)
                if self._settings.max_wait_ms > 0:
                    self._cond.notify_all()  # a batch waiting for company re-counts itself
                if not self._busy:
                    self._wake_engine()
                while not pending.done:
                    pending.wake.wait()
        if alone:
            try:
                return self._call(list(items))
            finally:
                with self._lock:
                    self._busy = False
                    if self._queue:  # they queued behind this call
                        self._wake_engine()
                    if self._closed:
                        self._cond.notify_all()
        if pending.error is not None:
            raise pending.error
        return pending.rows

    def _wake_engine(self) -> None:
        """Under the lock: get the queue served (start the engine thread, or wake it if it sleeps)."""
        if self._engine is None:
            self._engine = threading.Thread(target=self._engine_loop, name=self.name, daemon=True)
            self._engine.start()
        elif self._engine_sleeps:
            self._work.notify()

    def _engine_loop(self) -> None:
        if self._settings.engine_cpus:
            try:
                pin_thread(self._settings.engine_cpus)
            except OSError as exc:  # checked at start-up (serve); a cpuset changed since must not stop serving
                log.warning("event=engine_pin_failed cpus=%s error=%r", sorted(self._settings.engine_cpus), exc)
        try:
            self._serve_queue()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("event=batcher_engine_failed")
            with self._lock:
                self._engine, self._busy = None, False
                for pending in self._queue:
                    pending.error, pending.done = RuntimeError(f"the batcher's engine thread failed: {exc!r}"), True
                    pending.wake.notify()
                self._queue.clear()
                self._cond.notify_all()

    def _serve_queue(self) -> None:
        """The engine thread: run queued batches back to back while there are any; sleep otherwise;
        return once closed with nothing queued."""
        answered: list[_Pending] = []  # the last batch: its callers are woken after the next batch is taken
        with self._lock:
            while True:
                if self._queue and not self._busy:
                    self._busy = True  # also while _take waits for company under max_wait_ms
                    batch = self._take()
                    for pending in answered:
                        pending.wake.notify()
                    answered = batch
                    if batch:  # empty when every queued request had expired
                        self._lock.release()
                        try:
                            self._run_batch(batch)
                        finally:
                            self._lock.acquire()
                    self._busy = False
                    continue
                for pending in answered:
                    pending.wake.notify()
                answered = []
                if self._closed:
                    self._cond.notify_all()  # close() re-checks
                    if not self._queue:
                        return
                self._engine_sleeps = True
                try:
                    woken = self._work.wait(_ENGINE_IDLE_S)
                finally:
                    self._engine_sleeps = False
                if not woken and not self._queue:  # idle a while: end the thread (restarted on need)
                    self._engine = None
                    return

    def queued(self) -> int:
        """Requests waiting for the model (not counting the batch it is running)."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout_s: float | None = 5.0) -> None:
        """Refuse new work; requests already queued still run (the engine thread runs them, then
        ends). Idempotent."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._closed = True
            if self._engine is not None and self._engine_sleeps:
                self._work.notify()  # it returns once the queue is empty
            while self._queue or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)

    def _take(self) -> list[_Pending]:
        """Pop the next batch (under the lock): the head request and what fits behind it, in order.

        With ``max_wait_ms`` the leader first waits (the lock released) until the batch is full or
        the head request has waited that long since it arrived.
        """
        limit = self._settings.max_batch_size
        if self._settings.max_wait_ms > 0:
            deadline = self._queue[0].arrived + self._settings.max_wait_ms / 1000.0
            while sum(len(p.items) for p in self._queue) < limit and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
        self._drop_expired()
        batch: list[_Pending] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].items) <= limit):
            item = self._queue.popleft()
            batch.append(item)
            size += len(item.items)
        return batch

    def _drop_expired(self) -> None:
        """Answer every queued request whose deadline has passed with DeadlineExceeded (under the lock)."""
        now = time.monotonic()
        if not any(p.deadline is not None and p.deadline <= now for p in self._queue):
            return
        kept: deque[_Pending] = deque()
        for pending in self._queue:
            if pending.deadline is not None and pending.deadline <= now:
                waited_ms = (now - pending.arrived) * 1000.0
                pending.error = DeadlineExceeded(
                    f"the request's deadline passed after {waited_ms:.0f} ms in the queue; it was not run"
                )
                pending.done = True
                pending.wake.notify()  # its caller returns as soon as the leader releases the lock
            else:
                kept.append(pending)
        self._queue = kept

    def _call(self, items: list[Any], *, timed: bool = True) -> R:
        if self._on_batch is not None:
            self._on_batch(len(items))
        if self._on_run is None or not timed:
            rows = self._fn(items)
        else:
            start = time.perf_counter()
            try:
                rows = self._fn(items)
            finally:
                self._on_run(time.perf_counter() - start)
        if len(rows) != len(items):
            raise RuntimeError(f"batch function returned {len(rows)} rows for {len(items)} texts")
        return rows

    def _call_overlapping(self, items: list[Any]) -> R:
        """:meth:`_call` for concurrent callers (batching off), telling ``on_run`` the time in which
        at least one call ran: calls that wait for the engine's lock overlap the one it runs, and
        summing each call's own time would count the model busy several times over."""
        with self._lock:
            self._running += 1
            if self._running == 1:
                self._running_since = time.perf_counter()
        try:
            return self._call(items, timed=False)
        finally:
            with self._lock:
                self._running -= 1
                elapsed = time.perf_counter() - self._running_since if not self._running else None
            if elapsed is not None and self._on_run is not None:
                self._on_run(elapsed)

    def _run_batch(self, batch: list[_Pending]) -> None:
        """Run one batch outside the lock; every caller of it gets its rows or the batch's error."""
        items = [item for pending in batch for item in pending.items]
        try:
            rows = self._call(items)
        except BaseException as exc:  # every caller gets the error (no caller waits forever)
            log.debug("event=batch_failed size=%d error=%r", len(items), exc)
            rows, error = None, exc
        else:
            error = None
        start = 0
        for pending in batch:
            end = start + len(pending.items)
            pending.rows = rows[start:end] if rows is not None else None
            pending.error = error
            pending.done = True
            start = end


def _check_deadline(deadline: float | None, now: float) -> None:
    if deadline is not None and deadline <= now:
        raise DeadlineExceeded("the request's deadline had passed before its model call; it was not run")


class BatchedModel:
    """A LogitModel whose ``logits`` calls go through a :class:`MicroBatcher`.

    A model with ``encode`` and ``run_encoded`` (:class:`~edgekit.runtime.model.BundleModel`) has
    each request tokenized in its caller's thread before it queues, while the engine runs other
    requests, and only the engine call batched: under load the batch's tokenization no longer
    stands between two engine calls (at 16 clients it took about 1 ms per batch there, issue 12).
    """

    def __init__(
        self,
        model: LogitModel,
        settings: BatchSettings = BatchSettings(),
        *,
        on_batch: Callable[[int], None] | None = None,
        on_run: Callable[[float], None] | None = None,
    ) -> None:
        self._model = model
        encode, run = getattr(model, "encode", None), getattr(model, "run_encoded", None)
        self._encode: Callable[[Sequence[str]], Sequence[Any]] | None = encode if encode and run else None
        self._batcher: MicroBatcher[np.ndarray] = MicroBatcher(run if self._encode else model.logits, settings,
                                                               on_batch=on_batch, on_run=on_run)

    @property
    def info(self) -> ModelInfo:
        return self._model.info

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self._batcher.submit(self._encode(texts) if self._encode else texts)

    def logits_until(self, texts: Sequence[str], deadline: float | None) -> np.ndarray:
        """:meth:`logits`, dropped unrun (DeadlineExceeded) if ``deadline`` passes while it waits."""
        return self._batcher.submit(self._encode(texts) if self._encode else texts, deadline)

    def close(self) -> None:
        """Stop batching (queued requests still run); the wrapped model is closed by its owner."""
        self._batcher.close()
