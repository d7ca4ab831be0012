"""Temperature and fallback threshold on synthetic logits (numpy + torch's LBFGS)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import needs

pytestmark = needs("torch")


def _overconfident(n=400, k=5, seed=0):
    """Logits 3x too sharp: right 80% of the time, the wrong answers less sure than the right ones."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    right = rng.random(n) < 0.8
    logits[np.arange(n), np.where(right, y, (y + 1) % k)] += np.where(right, 2.5, 0.8)
    return logits * 3.0, y


def test_temperature_cools_an_overconfident_model():
    from edgekit.converters.calibrate import fit_temperature
    from edgekit.metrics import expected_calibration_error, softmax

    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert 2.0 < t < 4.5
    assert expected_calibration_error(softmax(logits, t), y) < expected_calibration_error(softmax(logits), y) / 2


def test_no_errors_no_temperature():
    """A model right on every validation text gives NLL no minimum: T stays 1, scores keep their order."""
    from edgekit.converters.calibrate import fit_temperature

    logits, y = _overconfident()
    logits[np.arange(len(y)), y] += 50.0
    assert fit_temperature(logits, y) == 1.0


def test_threshold_rule_reaches_the_teacher_with_the_fewest_cloud_calls():
    from edgekit.converters.calibrate import calibrate
    from edgekit.metrics import cascade_at, softmax

    logits, y = _overconfident()
    teacher = y.copy()  # a perfect cloud model
    cal = calibrate(logits, y, teacher, tolerance=0.002)
    assert cal.validation_cascade_accuracy >= 1.0 - 0.002
    assert 0.2 <= cal.validation_cloud_rate < 1.0  # every error must go (20%), not every text
    probs = softmax(logits, cal.temperature)
    scores, pred = probs.max(-1), probs.argmax(-1)
    lower = scores[scores < cal.threshold].max()  # the next threshold down sends fewer texts...
    rate, acc = cascade_at(lower, scores, pred, teacher, y)
    assert rate < cal.validation_cloud_rate and acc < 1.0 - 0.002  # ...and misses the target
    capped = calibrate(logits, y, teacher, max_cloud_rate=0.1)
    assert capped.validation_cloud_rate <= 0.1 + 1e-12
    assert capped.validation_cascade_accuracy < cal.validation_cascade_accuracy
    with pytest.raises(Exception, match="at least 20"):
        calibrate(logits[:5], y[:5], teacher[:5])
