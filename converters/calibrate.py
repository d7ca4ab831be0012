"""Confidence calibration and the fallback threshold.

Per artifact: fit a temperature on validation logits (Guo et al. 2017), then choose the
threshold on the calibrated max probability below which the cascade asks the cloud model.
Default rule: the lowest cloud rate whose cascade accuracy on validation is within
``tolerance`` of the teacher's; alternative: the most accurate cascade within ``max_cloud_rate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import DataError
from edgekit.metrics import cascade_at, expected_calibration_error, risk_coverage, softmax

__all__ = ["Calibrated", "calibrate", "cascade_at", "fit_temperature", "risk_coverage"]  # the last two live in edgekit.metrics

MIN_VALIDATION = 20  # fewer texts cannot place a threshold meaningfully


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising validation NLL (torch's LBFGS on log T).

    When the model is right on every validation text the NLL has no minimum (it falls as T -> 0,
    which would squash every score to 1.0 and leave the threshold nothing to rank): there is no
    evidence to calibrate on, so the temperature stays 1.
    """
    if len(y) and bool((np.asarray(logits).argmax(-1) == np.asarray(y)).all()):
        return 1.0
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    target = torch.as_tensor(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def _candidates(scores: np.ndarray) -> np.ndarray:
    # 0 (never ask) plus every distinct score: thresholds between them change nothing.
    return np.unique(np.concatenate([[0.0], scores]))


@dataclass
class Calibrated:
    temperature: float
    threshold: float
    ece_before: float
    ece_after: float
    validation_cloud_rate: float
    validation_cascade_accuracy: float
    rule: str


def calibrate(
    val_logits: np.ndarray,
    y_val: np.ndarray,
    teacher_val_pred: np.ndarray,
    *,
    tolerance: float = 0.002,
    max_cloud_rate: float | None = None,
) -> Calibrated:
    if len(y_val) < MIN_VALIDATION:
        raise DataError(
            f"calibration needs at least {MIN_VALIDATION} validation texts, got {len(y_val)}: "
            "give a larger --validation set"
        )
    temperature = fit_temperature(val_logits, y_val)
    probs = softmax(val_logits, temperature)
    scores, pred = probs.max(-1), probs.argmax(-1)
    teacher_acc = float((teacher_val_pred == y_val).mean())
    best = None
    for t in _candidates(scores):
        rate, acc = cascade_at(t, scores, pred, teacher_val_pred, y_val)
        if max_cloud_rate is None:
            if acc >= teacher_acc - tolerance and (best is None or rate < best[1]):
                best = (t, rate, acc)
        elif rate <= max_cloud_rate + 1e-12 and (best is None or acc > best[2] or (acc == best[2] and rate < best[1])):
            best = (t, rate, acc)
    if best is None:  # the teacher itself everywhere: the only point that is surely within tolerance
        t = float(np.nextafter(scores.max(), 2.0)) if max_cloud_rate is None else 0.0
        rate, acc = cascade_at(t, scores, pred, teacher_val_pred, y_val)
        best = (t, rate, acc)
    rule = f"max_cloud_rate={max_cloud_rate}" if max_cloud_rate is not None else f"within {tolerance * 100:.1f} points of the teacher"
    return Calibrated(
        temperature=temperature,
        threshold=float(min(1.0, best[0])),
        ece_before=expected_calibration_error(softmax(val_logits), y_val),
        ece_after=expected_calibration_error(probs, y_val),
        validation_cloud_rate=best[1],
        validation_cascade_accuracy=best[2],
        rule=rule,
    )
