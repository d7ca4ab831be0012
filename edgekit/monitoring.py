"""Drift monitoring: what normal looked like on validation, and how far live traffic is from it.

A :class:`Reference` is recorded when a bundle is converted (:func:`build_reference`, from the
calibrated validation probabilities) and travels in the bundle's manifest. It holds three
distributions and one rate:

* ``confidence``: the calibrated top probability, in equal-width bins over [0, 1];
* ``label``: the predicted label (the edge model's argmax), one bin per label;
* ``length``: the text length in **characters** (what the data plane sees before tokenizing),
  in bins cut at the validation deciles, so that each holds about a tenth of normal traffic;
* ``expected_cloud_rate``: the share of validation texts below the bundle's threshold.

A :class:`DriftMonitor` keeps the last ``window`` answered texts and scores each distribution of
that window against the reference with the **population stability index**::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

where ``e_i`` and ``a_i`` are the reference's and the window's shares of bin ``i``, each floored
at ``EPSILON`` (1e-4) so that an empty bin counts as rare rather than impossible and the
logarithm stays finite. PSI is the symmetrised Kullback-Leibler divergence (KL(a||e) + KL(e||a));
identical distributions score 0. The usual reading: below 0.1 stable, 0.1 to 0.25 a moderate
shift, above 0.25 a major shift (the default alert threshold).

Two samples of the same distribution still differ. For small differences PSI is about the
chi-square statistic over the sample size, so for ``K`` occupied bins, ``n`` live texts and a
reference of ``m`` texts its expected value under no drift is about ``(K - 1) * (1/n + 1/m)``
(:func:`psi_noise_floor`): 77 labels, a window of 1000 texts and 3000 validation texts give 0.10.
The window must be large enough to keep that floor well below the threshold; a monitor warns
when it is set up with a floor above half of it.

Each signal that crosses the threshold (once the window holds ``min_texts``) starts a drift
*episode*: one WARNING line when it starts, one INFO line when its score falls back below
``clear_below`` (hysteresis, so a score hovering at the threshold does not flap), never a line
per request. Cloud agreement (does the cloud's label equal the edge's, for texts the cloud
answered) is counted per edge label, cumulatively.

numpy only: the runtime's Prometheus metrics (``edgekit.runtime.monitor_metrics``) and the
converter build on this module.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import pairwise
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import ConfigError, ManifestError

__all__ = [
    "DriftMonitor",
    "DriftSettings",
    "DriftState",
    "EPSILON",
    "PSI_MAJOR",
    "PSI_MODERATE",
    "Reference",
    "SIGNALS",
    "build_reference",
    "psi",
    "psi_noise_floor",
    "text_length",
]

log = logging.getLogger(__name__)

SIGNALS = ("confidence", "label", "length")
EPSILON = 1e-4  # the floor of a bin's share in the PSI
PSI_MODERATE = 0.1  # below: stable
PSI_MAJOR = 0.25  # above: a major shift (the default threshold)
REFERENCE_SCHEMA = 1


def text_length(text: str) -> int:
    """The length the reference and the monitor bin: characters, the same at conversion and serving."""
    return len(text)


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, eps: float = EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or shares, same bins).

    Each side is normalised to shares and floored at ``eps``; an empty side scores 0 (nothing
    to compare). See the module docstring for the formula and its usual thresholds.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"psi needs two 1-D arrays over the same bins, got shapes {e.shape} and {a.shape}")
    e_total, a_total = e.sum(), a.sum()
    if e_total <= 0 or a_total <= 0:
        return 0.0
    e = np.maximum(e / e_total, eps)
    a = np.maximum(a / a_total, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_noise_floor(bins: int, n: int, m: int) -> float:
    """Expected PSI between two samples of ``n`` and ``m`` texts from the same distribution over
    ``bins`` occupied bins: ``(bins - 1) * (1/n + 1/m)`` (the chi-square approximation)."""
    if n <= 0 or m <= 0:
        return math.inf
    return max(bins - 1, 0) * (1.0 / n + 1.0 / m)


# -- the reference ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What normal looks like for one bundle, measured on validation (JSON-able: :meth:`to_dict`).

    ``confidence_counts`` bins the calibrated top probability in equal-width bins over [0, 1]
    (bin ``min(int(c * B), B - 1)``); ``length_edges`` are the inner cut points of the length
    bins in characters (bin ``j`` holds ``edges[j-1] <= length < edges[j]``).
    """

    labels: tuple[str, ...]
    label_counts: tuple[int, ...]
    confidence_counts: tuple[int, ...]
    length_edges: tuple[int, ...]
    length_counts: tuple[int, ...]
    threshold: float
    expected_cloud_rate: float
    schema: int = REFERENCE_SCHEMA

    def __post_init__(self) -> None:
        for name in ("labels", "label_counts", "confidence_counts", "length_edges", "length_counts"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ManifestError(f"reference {name} must be a list, got {type(value).__name__}")
            object.__setattr__(self, name, tuple(value))
        if self.schema != REFERENCE_SCHEMA:
            raise ManifestError(f"reference schema {self.schema!r} is not supported (this edgekit reads "
                                f"{REFERENCE_SCHEMA})")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ManifestError("reference labels must be a non-empty list of unique names")
        if len(self.label_counts) != len(self.labels):
            raise ManifestError(f"reference has {len(self.label_counts)} label counts for {len(self.labels)} labels")
        if len(self.confidence_counts) < 2:
            raise ManifestError("reference needs at least 2 confidence bins")
        if len(self.length_counts) != len(self.length_edges) + 1:
            raise ManifestError(f"reference has {len(self.length_counts)} length counts for "
                                f"{len(self.length_edges)} cut points (expected one more count than cut points)")
        edges = self.length_edges
        if any(not _is_int(e) or e < 1 for e in edges) or any(b <= a for a, b in pairwise(edges)):
            raise ManifestError(f"reference length_edges must be increasing positive integers, got {list(edges)}")
        totals = set()
        for name in ("label_counts", "confidence_counts", "length_counts"):
            counts = getattr(self, name)
            if any(not _is_int(c) or c < 0 for c in counts):
                raise ManifestError(f"reference {name} must be non-negative integers")
            totals.add(sum(counts))
        if len(totals) != 1 or totals == {0}:
            raise ManifestError(f"reference counts must cover the same positive number of texts, got {sorted(totals)}")
        for name in ("threshold", "expected_cloud_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ManifestError(f"reference {name} must lie in [0, 1], got {value!r}")

    @property
    def n_texts(self) -> int:
        """Validation texts the reference was measured on."""
        return sum(self.label_counts)

    @property
    def confidence_edges(self) -> np.ndarray:
        """The fixed edges of the confidence bins: equal width over [0, 1]."""
        return np.linspace(0.0, 1.0, len(self.confidence_counts) + 1)

    def counts(self, signal: str) -> tuple[int, ...]:
        """The reference's counts for one of :data:`SIGNALS`."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}; expected one of {', '.join(SIGNALS)}")
        return getattr(self, f"{signal}_counts")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "labels": list(self.labels),
            "label_counts": list(self.label_counts),
            "confidence_counts": list(self.confidence_counts),
            "length_edges": list(self.length_edges),
            "length_counts": list(self.length_counts),
            "threshold": self.threshold,
            "expected_cloud_rate": self.expected_cloud_rate,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        """The reference from its JSON form; ManifestError names what is missing, unknown or invalid."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"reference must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"reference has unknown fields: {', '.join(unknown)}")
        missing = sorted(k for k in known - set(data) if k != "schema")
        if missing:
            raise ManifestError(f"reference is missing: {', '.join(missing)}")
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _confidence_bins(confidences: np.ndarray, bins: int) -> np.ndarray:
    """Vectorised twin of the binning in :meth:`DriftMonitor.observe` (same arithmetic, same bins)."""
    scaled = np.nan_to_num(confidences * bins, nan=0.0, posinf=bins - 1, neginf=0.0)
    return np.clip(scaled.astype(np.int64), 0, bins - 1)


def _length_edges(lengths: np.ndarray, bins: int) -> tuple[int, ...]:
    """Inner cut points at the quantiles of ``lengths``: a length equal to a quantile stays below
    its cut (``floor(q) + 1``); repeated cut points merge, so very uniform lengths give fewer bins."""
    quantiles = np.quantile(lengths, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return tuple(sorted({math.floor(q) + 1 for q in quantiles.tolist()}))


def build_reference(
    probs: np.ndarray,
    labels: Sequence[str],
    texts: Sequence[str] | Sequence[int],
    threshold: float,
    *,
    confidence_bins: int = 20,
    length_bins: int = 10,
) -> Reference:
    """The reference of a bundle from its calibrated validation probabilities ``probs`` (N, L),
    its ``labels``, the validation ``texts`` (or their lengths from :func:`text_length`) and its
    fallback ``threshold``."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] != len(labels):
        raise ValueError(f"probs must have shape (texts, {len(labels)} labels) with at least one text, "
                         f"got {probs.shape}")
    if len(texts) != len(probs):
        raise ValueError(f"{len(texts)} texts for {len(probs)} rows of probabilities")
    if confidence_bins < 2 or length_bins < 1:
        raise ValueError(f"need at least 2 confidence bins and 1 length bin, got {confidence_bins} and {length_bins}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    lengths = np.asarray([t if _is_int(t) else text_length(t) for t in texts], dtype=np.int64)
    confidence = probs.max(axis=1)
    edges = _length_edges(lengths, length_bins)
    return Reference(
        labels=tuple(labels),
        label_counts=tuple(np.bincount(probs.argmax(axis=1), minlength=len(labels)).tolist()),
        confidence_counts=tuple(np.bincount(_confidence_bins(confidence, confidence_bins),
                                            minlength=confidence_bins).tolist()),
        length_edges=edges,
        length_counts=tuple(np.bincount(np.searchsorted(edges, lengths, side="right"),
                                        minlength=len(edges) + 1).tolist()),
        threshold=float(threshold),
        expected_cloud_rate=float((confidence < threshold).mean()),
    )


# -- the live monitor -------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftSettings:
    """How the monitor judges drift (``edgekit serve`` options).

    ``window``: the last texts scored against the reference; ``threshold``: the PSI above which a
    signal drifts; ``min_texts``: texts the window must hold before any verdict (default: a full
    window); ``check_every``: texts between two verdicts on the request path (default: a
    twentieth of the window, at most 100); ``clear_below``: the PSI under which an episode ends
    (default: 0.8 x threshold).
    """

    window: int = 1000
    threshold: float = PSI_MAJOR
    min_texts: int | None = None
    check_every: int | None = None
    clear_below: float | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"drift window must be at least 1 text, got {self.window}")
        if not self.threshold > 0:
            raise ConfigError(f"drift threshold must be positive, got {self.threshold}")
        if self.min_texts is None:
            object.__setattr__(self, "min_texts", self.window)
        if self.check_every is None:
            object.__setattr__(self, "check_every", max(1, min(100, self.window // 20)))
        if self.clear_below is None:
            object.__setattr__(self, "clear_below", 0.8 * self.threshold)
        if not 1 <= self.min_texts <= self.window:
            raise ConfigError(f"drift min_texts must lie in [1, window={self.window}], got {self.min_texts}")
        if self.check_every < 1:
            raise ConfigError(f"drift check_every must be at least 1, got {self.check_every}")
        if not 0.0 <= self.clear_below <= self.threshold:
            raise ConfigError(f"drift clear_below must lie in [0, threshold={self.threshold}], got {self.clear_below}")


@dataclass(frozen=True)
class DriftState:
    """One verdict: the PSI of each signal, which signals are in a drift episode, and the window."""

    scores: dict[str, float]
    drifting: dict[str, bool]
    window_texts: int
    judged: bool  # the window held min_texts: a verdict, not only a score
    window_cloud_rate: float  # share of the window below the reference's threshold
    evaluations: int = 0  # verdicts so far (this one included)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "drifting": dict(self.drifting), "window_texts": self.window_texts,
                "judged": self.judged, "window_cloud_rate": self.window_cloud_rate}


class DriftMonitor:
    """Scores a sliding window of answered texts against a :class:`Reference`; thread-safe.

    The window is a ring buffer of each text's bin indices with running counts per bin, so
    :meth:`observe` costs O(texts) whatever the window size; every ``check_every`` texts it
    computes the PSI of the three signals (O(bins), a few numpy calls) and opens or closes drift
    episodes. Cost per call (benchmarks/monitoring/observe_cost.py: 77 labels, window 1000, the
    2-core dev machine shared with a CPU-bound job, so the upper ends are contention): 2-4 us for
    a request of one text, 0.7-1.5 us per text in a batch of 32, the verdict included (about
    13 us every 50 texts, amortised). The lock is held only for the count updates: the bins are
    computed before it is taken.
    """

    def __init__(self, reference: Reference, settings: DriftSettings = DriftSettings()) -> None:
        self.reference = reference
        self.settings = settings
        self._lock = threading.Lock()
        self._bins = len(reference.confidence_counts)
        self._edges = reference.length_edges
        self._threshold = reference.threshold
        self._label_index = {label: i for i, label in enumerate(reference.labels)}
        self._ring: list[tuple[int, int, int, bool] | None] = [None] * settings.window
        self._next = 0
        self._size = 0
        self._below = 0  # texts in the window below the reference's threshold
        self._counts = {signal: [0] * len(reference.counts(signal)) for signal in SIGNALS}
        self._since_check = 0
        self._evaluations = 0
        self._drifting = dict.fromkeys(SIGNALS, False)
        self._agreed = [0] * len(reference.labels)  # per edge label, texts the cloud answered alike
        self._answered = [0] * len(reference.labels)  # per edge label, texts the cloud answered
        self._routes: dict[str, int] = {}
        self._expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for signal in SIGNALS:
            counts = np.asarray(reference.counts(signal), dtype=np.float64)
            shares = np.maximum(counts / counts.sum(), EPSILON)
            self._expected[signal] = (shares, np.log(shares))
            floor = psi_noise_floor(int(np.count_nonzero(counts)), settings.min_texts, reference.n_texts)
            if floor > settings.threshold / 2:
                log.warning(
                    "event=drift_window_small signal=%s expected_noise_psi=%.3f threshold=%s min_texts=%d "
                    "reference_texts=%d: same-distribution traffic scores near the threshold; use a larger window",
                    signal, floor, settings.threshold, settings.min_texts, reference.n_texts,
                )

    def observe(
        self,
        confidences: Sequence[float],
        labels: Sequence[str],
        lengths: Sequence[int],
        routes: Sequence[str],
        cloud_labels: Sequence[str | None] | None = None,
    ) -> DriftState | None:
        """Record one answered batch: per text the edge's calibrated top probability, the edge's
        label, the text's length (:func:`text_length`), the route that answered it and, where the
        cloud answered, the cloud's label (None elsewhere).

        Returns the new :class:`DriftState` when this call made a verdict (every
        ``check_every`` texts), else None.
        """
        n = len(confidences)
        if not len(labels) == len(lengths) == len(routes) == n or (cloud_labels is not None and len(cloud_labels) != n):
            raise ValueError("observe needs one confidence, label, length, route (and cloud label) per text")
        bins, edges, threshold, index = self._bins, self._edges, self._threshold, self._label_index
        rows = []
        for c, label, length in zip(confidences, labels, lengths):
            try:
                j = index[label]
            except KeyError:
                raise ValueError(f"label {label!r} is not one of the reference's labels") from None
            b = int(c * bins) if 0.0 <= c < 1.0 else (bins - 1 if c >= 1.0 else 0)
            rows.append((b, j, bisect_right(edges, length), c < threshold))
        conf, lab, size = self._counts["confidence"], self._counts["label"], self._counts["length"]
        ring, window = self._ring, self.settings.window
        with self._lock:
            pos = self._next
            for row in rows:
                old = ring[pos]
                if old is not None:
                    conf[old[0]] -= 1
                    lab[old[1]] -= 1
                    size[old[2]] -= 1
                    self._below -= old[3]
                ring[pos] = row
                conf[row[0]] += 1
                lab[row[1]] += 1
                size[row[2]] += 1
                self._below += row[3]
                pos += 1
                if pos == window:
                    pos = 0
            self._next = pos
            self._size = min(self._size + n, window)
            for route in routes:
                self._routes[route] = self._routes.get(route, 0) + 1
            if cloud_labels is not None:
                for row, label, cloud in zip(rows, labels, cloud_labels):
                    if cloud is not None:
                        self._answered[row[1]] += 1
                        self._agreed[row[1]] += cloud == label
            self._since_check += n
            if self._since_check < self.settings.check_every:
                return None
            return self._judge()

    def scores(self) -> dict[str, float]:
        """The PSI of each signal over the current window (0 while it is empty); no verdict."""
        with self._lock:
            return self._scores()

    def state(self) -> DriftState:
        """A verdict on the current window: opens or closes episodes (and logs them) as needed."""
        with self._lock:
            return self._judge()

    def agreement(self) -> dict[str, tuple[int, int]]:
        """Per edge label: (texts the cloud answered with the same label, texts the cloud answered)."""
        with self._lock:
            return {label: (self._agreed[i], self._answered[i]) for i, label in enumerate(self.reference.labels)}

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view for GetModelInfo and ``edgekit monitor``: the verdict, the settings,
        the window's and the reference's cloud rate, cloud agreement and routes so far."""
        state = self.state()
        with self._lock:
            routes = dict(self._routes)
        agreement = {label: {"agreed": agreed, "answered": answered}
                     for label, (agreed, answered) in self.agreement().items() if answered}
        return {**state.to_dict(), "threshold": self.settings.threshold, "window": self.settings.window,
                "min_texts": self.settings.min_texts, "expected_cloud_rate": self.reference.expected_cloud_rate,
                "agreement": agreement, "routes": routes}

    def _scores(self) -> dict[str, float]:
        if self._size == 0:
            return dict.fromkeys(SIGNALS, 0.0)
        out = {}
        for signal in SIGNALS:
            expected, log_expected = self._expected[signal]
            actual = np.maximum(np.asarray(self._counts[signal], dtype=np.float64) / self._size, EPSILON)
            out[signal] = float(np.dot(actual - expected, np.log(actual) - log_expected))
        return out

    def _judge(self) -> DriftState:
        """Score the window and open or close episodes; called with the lock held."""
        self._since_check = 0
        self._evaluations += 1
        scores = self._scores()
        judged = self._size >= self.settings.min_texts
        threshold, clear_below = self.settings.threshold, self.settings.clear_below
        for signal, score in scores.items():
            if not self._drifting[signal] and judged and score > threshold:
                self._drifting[signal] = True
                log.warning("event=drift_started signal=%s psi=%.3f threshold=%s window_texts=%d",
                            signal, score, threshold, self._size)
            elif self._drifting[signal] and score < clear_below:
                self._drifting[signal] = False
                log.info("event=drift_ended signal=%s psi=%.3f clear_below=%s window_texts=%d",
                         signal, score, clear_below, self._size)
        return DriftState(
            scores=scores,
            drifting=dict(self._drifting),
            window_texts=self._size,
            judged=judged,
            window_cloud_rate=self._below / self._size if self._size else 0.0,
            evaluations=self._evaluations,
        )
