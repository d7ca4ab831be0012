"""Classification metrics in numpy.

Hand-written on purpose: ``edgekit bench`` runs on a Raspberry Pi with only the runtime extra,
where scikit-learn (and its SciPy) would be a large install for three formulas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy",
    "agreement",
    "cascade_at",
    "classification_metrics",
    "cloud_rate_for_accuracy",
    "expected_calibration_error",
    "macro_f1",
    "risk_coverage",
    "softmax",
]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


agreement = accuracy  # agreement with the teacher is accuracy against the teacher's labels


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.union1d(y_true, y_pred) if num_labels is None else np.arange(num_labels)
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al., 2017)."""
    probs = np.asarray(probs)
    y_true = np.asarray(y_true)
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def classification_metrics(
    logits: np.ndarray, y_true: Sequence[int], *, teacher_pred: Sequence[int] | None = None
) -> dict[str, float]:
    pred = np.asarray(logits).argmax(axis=-1)
    out = {
        "accuracy": accuracy(y_true, pred),
        "macro_f1": macro_f1(y_true, pred),
    }
    if teacher_pred is not None:
        out["agreement"] = agreement(teacher_pred, pred)
    return out


def cascade_at(threshold: float, scores: np.ndarray, edge_pred: np.ndarray, cloud_pred: np.ndarray, y: np.ndarray):
    """(cloud_rate, cascade_accuracy): the edge answers where score >= threshold, the cloud elsewhere."""
    to_cloud = scores < threshold
    answer = np.where(to_cloud, cloud_pred, edge_pred)
    return float(to_cloud.mean()), float((answer == y).mean())


def risk_coverage(scores, edge_pred, cloud_pred, y, points=(1.0, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)):
    """Rows (coverage, threshold, edge accuracy on what it answers, cloud rate, cascade accuracy)."""
    rows = []
    order = np.sort(scores)[::-1]
    for coverage in points:
        k = max(1, int(round(coverage * len(scores))))
        threshold = float(order[k - 1]) if coverage < 1.0 else 0.0
        answered = scores >= threshold
        cloud_rate, cascade = cascade_at(threshold, scores, edge_pred, cloud_pred, y)
        rows.append(
            {
                "coverage": float(answered.mean()),
                "threshold": threshold,
                "edge_accuracy": float((edge_pred[answered] == y[answered]).mean()) if answered.any() else 0.0,
                "cloud_rate": cloud_rate,
                "cascade_accuracy": cascade,
            }
        )
    return rows


def cloud_rate_for_accuracy(target: float, scores: np.ndarray, edge_pred: np.ndarray, cloud_pred: np.ndarray,
                            reference: np.ndarray) -> float | None:
    """The lowest cloud rate at which the cascade (the cloud below a score threshold) reaches ``target``
    accuracy against ``reference``; None if even the cloud everywhere does not."""
    n = len(scores)
    if n == 0:
        return None
    order = np.argsort(scores, kind="stable")  # the least sure go to the cloud first
    edge_ok = (edge_pred == reference)[order].astype(np.int64)
    cloud_ok = (cloud_pred == reference)[order].astype(np.int64)
    accuracy = (edge_ok.sum() + np.concatenate([[0], np.cumsum(cloud_ok - edge_ok)])) / n  # k = 0 .. n to the cloud
    ranked = scores[order]
    reachable = np.ones(n + 1, dtype=bool)  # a threshold cannot split equal scores
    reachable[1:n] = ranked[:-1] < ranked[1:]
    k = np.flatnonzero(reachable & (accuracy >= target - 1e-12))
    return float(k[0] / n) if k.size else None
