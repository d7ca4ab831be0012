"""Micro-batching: merge the texts of concurrent requests into one model call.

A transformer on a CPU costs little more for 8 texts than for 1, so under concurrent
load it pays to hold a request for a millisecond or two and run it together with its
neighbours. Callers block in :meth:`MicroBatcher.submit`; one worker thread gathers
requests until ``max_batch_size`` texts are waiting or ``max_wait_ms`` has passed since
the first one arrived, calls the batch function once on the concatenation, and hands
each caller its own slice of the result (or the batch's exception).

Requests are never split: a request with more texts than ``max_batch_size`` runs as a
batch of its own, and a request that would overflow the current batch waits for the
next one. With ``max_batch_size <= 1`` there is no worker at all: ``submit`` calls the
function directly in the caller's thread.

:class:`BatchedModel` puts a batcher in front of a :class:`~edgekit.runtime.types.LogitModel`
and is itself a LogitModel, so the cascade does not know whether batching is on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from edgekit.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgekit.runtime.types import LogitModel, ModelInfo

__all__ = ["BatchSettings", "BatchedModel", "MicroBatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSettings:
    """How long a request may wait for company, and how big a batch may grow."""

    max_batch_size: int = 8
    max_wait_ms: float = 2.0

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
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class _Rows(Protocol):
    """What a batch function returns: one row per text, sliceable (an ndarray or a list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Any: ...


R = TypeVar("R", bound=_Rows)


class MicroBatcher(Generic[R]):
    """Gather concurrent ``submit`` calls into calls of ``fn`` on up to ``max_batch_size`` texts.

    ``fn`` must return one row per input text. ``on_batch`` is told the size of every
    batch ``fn`` runs on (for metrics), with batching on or off.
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
        # None is the stop sentinel; close() puts it last, under the lock submit() holds to enqueue.
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._worker: threading.Thread | None = None
        if settings.enabled:
            self._worker = threading.Thread(target=self._run, name=name, daemon=True)
            self._worker.start()

    def submit(self, texts: Sequence[str]) -> R:
        """Run ``fn`` on ``texts``, possibly together with other callers' texts; block for the rows."""
        if self._worker is None:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            return self._call(list(texts))
        pending = _Pending(texts)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.put(pending)
        return pending.future.result()

    def close(self, timeout_s: float | None = 5.0) -> None:
        """Refuse new work, run every request already queued, stop the worker. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._worker is not None:
                self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout_s)

    def _call(self, texts: list[str]) -> R:
        if self._on_batch is not None:
            self._on_batch(len(texts))
        rows = self._fn(texts)
        if len(rows) != len(texts):
            raise RuntimeError(f"batch function returned {len(rows)} rows for {len(texts)} texts")
        return rows

    def _run(self) -> None:
        carry: _Pending | None = None  # a request that did not fit into the previous batch
        while True:
            first = carry if carry is not None else self._queue.get()
            if first is None:
                return
            batch, carry = self._gather(first)
            self._run_batch(batch)

    def _gather(self, first: _Pending) -> tuple[list[_Pending], _Pending | None]:
        """Collect requests behind ``first`` until the batch is full or ``first`` has waited
        ``max_wait_ms`` since it arrived (time spent queued behind a running batch counts).

        Returns the batch and the request that would have overflowed it, if any.
        """
        batch, size = [first], len(first.texts)
        deadline = first.arrived + self._settings.max_wait_ms / 1000.0
        while size < self._settings.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # nothing can follow the sentinel: hand it back to _run
                break
            if size + len(item.texts) > self._settings.max_batch_size:
                return batch, item
            batch.append(item)
            size += len(item.texts)
        return batch, None

    def _run_batch(self, batch: list[_Pending]) -> None:
        texts = [text for pending in batch for text in pending.texts]
        try:
            rows = self._call(texts)
        except BaseException as exc:  # every caller gets the error (no caller waits forever)
            log.debug("event=batch_failed size=%d error=%r", len(texts), exc)
            for pending in batch:
                pending.future.set_exception(exc)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.texts)
            pending.future.set_result(rows[start:end])
            start = end


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

    def close(self) -> None:
        """Stop batching (queued requests still run); the wrapped model is closed by its owner."""
        self._batcher.close()
