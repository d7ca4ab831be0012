"""Micro-batching: merge the texts of concurrent requests into one model call, without waiting.

A transformer on a CPU costs little more for 8 texts than for 1, so under concurrent load it
pays to run neighbours together. The batching here is *opportunistic* (Triton's dynamic batcher
with no queue delay, a "leader/follower" scheme): a request that finds the model idle runs at
once, in its caller's thread, alone; requests that arrive while the model is busy queue up, and
when the model comes free the first of them takes every queued request (up to ``max_batch_size``
texts) and runs them as one call. A lone kiosk query therefore never waits for company that
will not come (issue 12: the old 2 ms wait cost 2.6 ms per call at one client), and under load
batches form by themselves from what piled up during the previous call.

``max_wait_ms > 0`` restores the old trade-off for users who want it: a leader waits up to that
long (since its request arrived) for the batch to fill before running it.

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

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgekit.runtime.types import LogitModel, ModelInfo

__all__ = ["BatchSettings", "BatchedModel", "MicroBatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSettings:
    """How big a batch may grow, and how long a request may wait for company (0: never)."""

    max_batch_size: int = 8
    max_wait_ms: float = 0.0

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
    texts: Sequence[str]
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

    ``fn`` must return one row per input text. ``on_batch`` is told the size of every batch
    ``fn`` runs on (for metrics), with batching on or off. There is no worker thread: the caller
    whose request heads the queue when the model comes free runs the batch (its own request
    included) and hands every other caller its rows.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], R],
        settings: BatchSettings = BatchSettings(),
        *,
        on_batch: Callable[[int], None] | None = None,
        name: str = "edgekit-batcher",
    ) -> None:
        self._fn = fn
        self._settings = settings
        self._on_batch = on_batch
        self.name = name
        self._lock = threading.Lock()
        # the lone request's path takes ``_lock`` itself: the condition's ``with`` adds two Python
        # calls per use, each a few us on the caches a model call has just flushed (issue 12)
        self._cond = threading.Condition(self._lock)
        self._queue: deque[_Pending] = deque()
        self._busy = False
        self._closed = False

    def submit(self, texts: Sequence[str], deadline: float | None = None) -> R:
        """Run ``fn`` on ``texts``, possibly together with other callers' texts; block for the rows.

        ``deadline`` (a ``time.monotonic()`` value): if it passes while the request waits for
        the model, the request is dropped unrun and raises :class:`DeadlineExceeded`, so the
        model never works for a caller who already left.
        """
        if not self._settings.enabled:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            _check_deadline(deadline, time.monotonic())
            return self._call(list(texts))
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            alone = not self._busy and not self._queue and self._settings.max_wait_ms <= 0
            if alone:
                _check_deadline(deadline, time.monotonic())
                self._busy = True  # the model is idle and nobody queues: run at once, no bookkeeping
            else:
                pending = self._wait_or_lead(texts, deadline)
        if alone:
            try:
                return self._call(list(texts))
            finally:
                with self._lock:
                    self._busy = False
                    if self._queue or self._closed:  # nobody else waits on the model otherwise
                        self._model_free()
        if pending.error is not None:
            raise pending.error
        return pending.rows

    def _wait_or_lead(self, texts: Sequence[str], deadline: float | None) -> _Pending:
        """Queue ``texts`` and wait (under the lock) until some leader, maybe this caller, ran them."""
        pending = _Pending(texts, threading.Condition(self._lock), deadline)
        self._queue.append(pending)
        if self._settings.max_wait_ms > 0:
            self._cond.notify_all()  # a leader waiting for company re-counts its batch
        while not pending.done:
            if self._busy:
                pending.wake.wait()
                continue
            # the model is free: lead a batch from the head of the queue (busy from here on,
            # also while _take waits for company under max_wait_ms, so nobody else leads)
            self._busy = True
            batch: list[_Pending] = []
            try:
                batch = self._take()
                if batch:  # empty when every queued request had expired
                    self._lock.release()
                    try:
                        self._run_batch(batch)
                    finally:
                        self._lock.acquire()
            finally:
                self._busy = False
                for done in batch:  # their rows are in: wake their callers, and nobody else
                    done.wake.notify()
                self._model_free()
        return pending

    def _model_free(self) -> None:
        """Under the lock, once the model is free: the queue's head leads the next batch (only it
        is woken: waking every waiter after each batch made them all contend for the lock and the
        GIL with the next leader, issue 12), and close() re-checks."""
        if self._queue:
            self._queue[0].wake.notify()
        if self._closed:
            self._cond.notify_all()

    def queued(self) -> int:
        """Requests waiting for the model (not counting the batch it is running)."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout_s: float | None = 5.0) -> None:
        """Refuse new work; requests already queued still run (their callers lead them). Idempotent."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._closed = True
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
            while sum(len(p.texts) for p in self._queue) < limit and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
        self._drop_expired()
        batch: list[_Pending] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].texts) <= limit):
            item = self._queue.popleft()
            batch.append(item)
            size += len(item.texts)
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

    def _call(self, texts: list[str]) -> R:
        if self._on_batch is not None:
            self._on_batch(len(texts))
        rows = self._fn(texts)
        if len(rows) != len(texts):
            raise RuntimeError(f"batch function returned {len(rows)} rows for {len(texts)} texts")
        return rows

    def _run_batch(self, batch: list[_Pending]) -> None:
        """Run one batch outside the lock; every caller of it gets its rows or the batch's error."""
        texts = [text for pending in batch for text in pending.texts]
        try:
            rows = self._call(texts)
        except BaseException as exc:  # every caller gets the error (no caller waits forever)
            log.debug("event=batch_failed size=%d error=%r", len(texts), exc)
            rows, error = None, exc
        else:
            error = None
        start = 0
        for pending in batch:
            end = start + len(pending.texts)
            pending.rows = rows[start:end] if rows is not None else None
            pending.error = error
            pending.done = True
            start = end


def _check_deadline(deadline: float | None, now: float) -> None:
    if deadline is not None and deadline <= now:
        raise DeadlineExceeded("the request's deadline had passed before its model call; it was not run")


class BatchedModel:
    """A LogitModel whose ``logits`` calls go through a :class:`MicroBatcher`."""

    def __init__(
        self,
        model: LogitModel,
        settings: BatchSettings = BatchSettings(),
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._model = model
        self._batcher: MicroBatcher[np.ndarray] = MicroBatcher(model.logits, settings, on_batch=on_batch)

    @property
    def info(self) -> ModelInfo:
        return self._model.info

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self._batcher.submit(texts)

    def logits_until(self, texts: Sequence[str], deadline: float | None) -> np.ndarray:
        """:meth:`logits`, dropped unrun (DeadlineExceeded) if ``deadline`` passes while it waits."""
        return self._batcher.submit(texts, deadline)

    def close(self) -> None:
        """Stop batching (queued requests still run); the wrapped model is closed by its owner."""
        self._batcher.close()
