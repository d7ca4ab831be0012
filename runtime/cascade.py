"""The confidence policy and the fallback router: edge first, cloud when the edge is unsure.

For a batch of texts the edge model's logits become calibrated probabilities,
``softmax(logits / temperature)`` with the temperature the bundle was calibrated with.
A text whose top probability reaches the threshold is answered at the edge (``EDGE``).
The rest, if the request allows the cloud and a cloud client is configured, go to the
cloud model together, in **one** call bounded by ``cloud_timeout_ms`` (or by the caller's
remaining deadline, if shorter), and are answered with the cloud's label and score
(``CLOUD``). Their ``top_k`` puts the cloud's (label, score) first and fills up with the
edge's probabilities for the other labels, so its scores come from two models.

When the cloud was needed but did not answer, the edge answers with route
``EDGE_CLOUD_FAILED`` (``on_cloud_error="degrade"``, the default) or the request fails
with :class:`~edgekit.errors.CloudUnavailable` (``"fail"``). "Did not answer" covers an
error or timeout, an open circuit breaker (after ``breaker_failures`` consecutive failures
the cloud is not called for ``breaker_cooldown_s``; then one trial call decides between
closing and another cool-down), and saturation: when ``max_cloud_inflight`` cloud calls are
already running, the request does not queue for a slot but degrades at once, whatever the
policy, because queueing would only add the cloud's latency to every request.

Without a cloud client, or with ``allow_cloud=False``, unsure texts get the edge answer with
route ``EDGE``: nothing failed, the cloud was simply not an option.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgekit.metrics import softmax

from edgekit.errors import CloudUnavailable, ConfigError, ModelError
from edgekit.runtime.types import ClassifyOptions, LogitModel, Prediction, Route, check_logits

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.cloud import CloudClient
    from edgekit.runtime.recorder import Recorder

__all__ = ["Cascade", "CascadeSettings", "CircuitBreaker", "OnCloudError", "calibrated_probabilities"]

log = logging.getLogger(__name__)
RECORD_TOP_K = 5  # the edge's answers kept beside the cloud's in a record


class OnCloudError(str, enum.Enum):
    """What a request gets when the cloud was needed and did not answer."""

    DEGRADE = "degrade"  # the edge's answer, route EDGE_CLOUD_FAILED
    FAIL = "fail"  # CloudUnavailable (gRPC UNAVAILABLE)


@dataclass(frozen=True)
class CascadeSettings:
    threshold: float | None = None  # None: the bundle's calibrated threshold (ModelInfo.threshold)
    cloud_timeout_ms: float = 300.0
    on_cloud_error: OnCloudError = OnCloudError.DEGRADE
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    max_cloud_inflight: int = 4

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "on_cloud_error", OnCloudError(self.on_cloud_error))
        except ValueError:
            choices = ", ".join(repr(p.value) for p in OnCloudError)
            raise ConfigError(f"on_cloud_error must be one of {choices}, got {self.on_cloud_error!r}") from None
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.cloud_timeout_ms <= 0:
            raise ConfigError(f"cloud_timeout_ms must be positive, got {self.cloud_timeout_ms}")
        if self.breaker_failures < 1:
            raise ConfigError(f"breaker_failures must be at least 1, got {self.breaker_failures}")
        if self.breaker_cooldown_s < 0:
            raise ConfigError(f"breaker_cooldown_s must be >= 0, got {self.breaker_cooldown_s}")
        if self.max_cloud_inflight < 1:
            raise ConfigError(f"max_cloud_inflight must be at least 1, got {self.max_cloud_inflight}")


class CircuitBreaker:
    """closed --N consecutive failures--> open --cool-down--> half-open --trial--> closed | open.

    In half-open state exactly one caller is let through; the others are refused until
    that trial call reports its outcome. The clock is injectable so tests need no sleeps.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_failures = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._trial_running or self._clock() - self._opened_at >= self._cooldown_s:
                return "half_open"
            return "open"

    def allow(self) -> bool:
        """May a call go out now? A True in half-open state makes the caller the trial."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial_running or self._clock() - self._opened_at < self._cooldown_s:
                return False
            self._trial_running = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_running or self._failures >= self._max_failures:
                if self._opened_at is None:
                    log.warning("event=cloud_breaker_open failures=%d cooldown_s=%s", self._failures, self._cooldown_s)
                self._opened_at = self._clock()
                self._trial_running = False


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), row-wise and overflow-safe, in float64 (the core's one softmax)."""
    return softmax(logits, temperature)


class Cascade:
    """Answer texts at the edge, and the unsure ones in the cloud (see the module docstring).

    ``on_cloud`` is told the outcome of every cloud attempt, for metrics: ``"ok"``,
    ``"error"``, ``"timeout"`` (calls made), ``"breaker_open"``, ``"saturated"`` or
    ``"no_time_left"`` (calls skipped).
    """

    def __init__(
        self,
        edge: LogitModel,
        cloud: CloudClient | None = None,
        settings: CascadeSettings = CascadeSettings(),
        *,
        on_cloud: Callable[[str], None] | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        info = edge.info
        if info.temperature <= 0:
            raise ConfigError(f"model {info.name!r} has temperature {info.temperature}; it must be positive")
        self.edge = edge
        self.cloud = cloud
        self.settings = settings
        self.threshold = settings.threshold if settings.threshold is not None else info.threshold
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s, clock)
        self._inflight = threading.BoundedSemaphore(settings.max_cloud_inflight)
        self._on_cloud = on_cloud
        self.recorder = recorder  # --record: what the cloud answered, for a later convert --feedback
        self._who = f"model {info.name!r}"  # formatted once: it is only read when a check fails
        self._labels = frozenset(info.labels)  # a cloud answer outside them is garbage, not an answer
        # a batched edge model drops a request whose deadline passes while it queues; a plain one runs it
        until = getattr(edge, "logits_until", None)
        self._edge_logits = until if until is not None else (lambda texts, deadline: edge.logits(texts))

    def with_edge(self, edge: LogitModel) -> Cascade:
        """A cascade for another edge model that shares this one's cloud, settings, circuit breaker
        and cloud in-flight cap (a hot reload swaps the edge model, not the cloud's state)."""
        other = Cascade(edge, self.cloud, self.settings, on_cloud=self._on_cloud, recorder=self.recorder)
        other.breaker = self.breaker
        other._inflight = self._inflight
        return other

    def classify(
        self,
        texts: Sequence[str],
        options: ClassifyOptions = ClassifyOptions(),
        *,
        time_remaining_s: float | None = None,
    ) -> list[Prediction]:
        """One Prediction per text. ``time_remaining_s``: the caller's deadline, caps the cloud call."""
        info = self.edge.info
        start = time.perf_counter()
        deadline = None if time_remaining_s is None else time.monotonic() + time_remaining_s
        logits = self._edge_logits(texts, deadline)
        check_logits(logits, len(texts), len(info.labels), who=self._who, error=ModelError)
        edge_tops, edge_scores = edge_answers(logits, info.temperature, info.labels, options.top_k)
        edge_ms = (time.perf_counter() - start) * 1000.0

        threshold = options.threshold if options.threshold is not None else self.threshold
        unsure = [i for i, score in enumerate(edge_scores) if score < threshold]
        cloud_answers: dict[int, tuple[str, float]] = {}
        cloud_failed = False
        if unsure and options.allow_cloud and self.cloud is not None:
            answers = self._ask_cloud(self.cloud, [texts[i] for i in unsure], deadline)
            if answers is None:
                cloud_failed = True
            else:
                cloud_answers = dict(zip(unsure, answers))
        total_ms = (time.perf_counter() - start) * 1000.0
        failed = frozenset(unsure) if cloud_failed else frozenset()

        name, version = info.name, info.version
        predictions = []
        for i, edge_top in enumerate(edge_tops):
            edge_label = edge_top[0][0]
            if i in cloud_answers:
                label, score = cloud_answers[i]
                top = ((label, score), *(pair for pair in edge_top if pair[0] != label))[: options.top_k]
                route, latency = Route.CLOUD, total_ms
            else:
                (label, score), top = edge_top[0], edge_top
                route, latency = (Route.EDGE_CLOUD_FAILED, total_ms) if i in failed else (Route.EDGE, edge_ms)
            # positional, in Prediction's field order: keywords cost a few us per answer on cold caches (issue 12)
            predictions.append(Prediction(label, score, top, route, edge_scores[i], latency, name, version, edge_label))
        if self.recorder is not None and cloud_answers:
            self._record(texts, logits, edge_scores, cloud_answers, info)
        return predictions

    def _record(self, texts, logits: np.ndarray, edge_scores, cloud_answers: dict[int, tuple[str, float]], info) -> None:
        """What the cloud answered, with the edge's top-5 for the same texts (``--record``)."""
        rows = sorted(cloud_answers)
        tops, _ = edge_answers(logits[rows], info.temperature, info.labels, RECORD_TOP_K)
        for i, top in zip(rows, tops):
            label, score = cloud_answers[i]
            self.recorder.record(texts[i], edge_top_k=top, edge_score=edge_scores[i], cloud_label=label,
                                 cloud_score=score, model_name=info.name, model_version=info.version,
                                 route=Route.CLOUD.value)

    def _ask_cloud(
        self, cloud: CloudClient, texts: list[str], deadline: float | None
    ) -> list[tuple[str, float]] | None:
        """The cloud's answers, or None to degrade; raises CloudUnavailable under the fail policy.

        The call gets ``cloud_timeout_ms`` or what is left of the caller's ``deadline``
        (``time.monotonic()``), whichever is shorter.
        """
        timeout_s = self.settings.cloud_timeout_ms / 1000.0
        if deadline is not None:
            timeout_s = min(timeout_s, deadline - time.monotonic())
        if timeout_s <= 0:
            return self._give_up("no_time_left", CloudUnavailable("no time left before the request's deadline"))
        if not self._inflight.acquire(blocking=False):
            self._report("saturated")
            return None  # never queue for a slot, whatever the policy (see the module docstring)
        try:
            if not self.breaker.allow():
                paused = CloudUnavailable("the cloud model failed repeatedly; calls are paused (circuit open)")
                return self._give_up("breaker_open", paused)
            begin = time.perf_counter()
            try:
                answers = _call(cloud, texts, timeout_s, self._labels)
            except CloudUnavailable as exc:
                self.breaker.failure()
                elapsed_s = time.perf_counter() - begin
                outcome = "timeout" if elapsed_s >= timeout_s else "error"
                log.warning(
                    "event=cloud_failed outcome=%s texts=%d elapsed_ms=%.1f error=%s",
                    outcome, len(texts), elapsed_s * 1000.0, exc,
                )
                return self._give_up(outcome, exc)
            self.breaker.success()
            self._report("ok")
            return answers
        finally:
            self._inflight.release()

    def _give_up(self, outcome: str, error: CloudUnavailable) -> None:
        self._report(outcome)
        if self.settings.on_cloud_error is OnCloudError.FAIL:
            raise error

    def _report(self, outcome: str) -> None:
        if self._on_cloud is not None:
            self._on_cloud(outcome)


# Up to this many rows the calibration runs in plain Python: a server answers one text at a time
# most of the time, and there a handful of numpy calls on a 1 x 77 array cost more than the
# arithmetic (each call's dispatch is paid again, with cold caches, on every request: profiled at
# 39 us for the numpy softmax inside `edgekit serve` against about 6 us in a hot loop).
_PYTHON_ROWS = 4


def edge_answers(logits: np.ndarray, temperature: float, labels: Sequence[str], k: int
                 ) -> tuple[list[tuple[tuple[str, float], ...]], list[float]]:
    """Each row's k best ``(label, calibrated probability)`` pairs (best first; ties: lower index
    first) and its top probability, from raw logits: ``softmax(logits / temperature)``."""
    if len(logits) <= _PYTHON_ROWS:
        return _answers_python(logits.tolist(), temperature, labels, k)
    probs = calibrated_probabilities(logits, temperature)
    best = probs.argmax(axis=1)
    scores = probs[np.arange(len(probs)), best].tolist()
    if k == 1:
        return [((labels[j], p),) for j, p in zip(best.tolist(), scores)], scores
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    tops = [tuple((labels[j], p) for j, p in zip(row, np.take(probs[i], row).tolist()))
            for i, row in enumerate(order.tolist())]
    return tops, scores


def _answers_python(rows: list[list[float]], temperature: float, labels: Sequence[str], k: int
                    ) -> tuple[list[tuple[tuple[str, float], ...]], list[float]]:
    # Plain loops, no comprehension: on the caches a model call has just flushed, a comprehension's
    # extra frame and a list of the exponentials cost more than the arithmetic (issue 12: 24 -> 10 us
    # for one 1 x 77 row, timed after a model call); the top label's probability is 1 / sum, exactly.
    inv_t, exp = 1.0 / temperature, math.exp
    tops, scores = [], []
    for row in rows:
        top = max(row)
        total = 0.0
        for x in row:
            total += exp((x - top) * inv_t)
        if k == 1:
            pairs: tuple[tuple[str, float], ...] = ((labels[row.index(top)], 1.0 / total),)  # the first maximum
        else:
            order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]  # stable: ties keep index order
            pairs = tuple((labels[j], exp((row[j] - top) * inv_t) / total) for j in order)
        tops.append(pairs)
        scores.append(pairs[0][1])
    return tops, scores


def _call(cloud: CloudClient, texts: list[str], timeout_s: float, labels: frozenset[str]) -> list[tuple[str, float]]:
    """One cloud call; whatever goes wrong (even a client bug, or an answer that is not one of
    this bundle's labels with a probability) is a CloudUnavailable to degrade from."""
    try:
        answers = cloud.classify(texts, timeout_s)
    except CloudUnavailable:
        raise
    except Exception as exc:
        raise CloudUnavailable(f"the cloud client raised {exc!r}") from exc
    if len(answers) != len(texts):
        raise CloudUnavailable(f"the cloud model answered {len(answers)} of {len(texts)} texts")
    for label, score in answers:
        if label not in labels:
            raise CloudUnavailable(f"the cloud model answered {label!r}, which is not one of this bundle's labels")
        if not (isinstance(score, float) and 0.0 <= score <= 1.0):  # NaN fails both comparisons
            raise CloudUnavailable(f"the cloud model answered a score of {score!r} for {label!r}; expected a probability")
    return answers
