"""The confidence policy and fallback router: who answers, and what happens when the cloud cannot."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgekit.errors import CloudUnavailable, ConfigError, ModelError
from edgekit.runtime.cascade import Cascade, CascadeSettings, CircuitBreaker, OnCloudError, calibrated_probabilities
from edgekit.runtime.types import ClassifyOptions, Route
from tests.fakes import CONFIDENT, UNSURE, FakeCloud, KeywordModel, ManualClock, cloud_model

UNSURE_TEXTS = list(UNSURE)


def right_cloud() -> FakeCloud:
    return FakeCloud(cloud_model().predict)


def test_calibration_is_softmax_of_logits_over_temperature():
    logits = np.array([[2.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]])
    probs = calibrated_probabilities(logits, 1.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[0], np.exp([2, 0, 0]) / np.exp([2, 0, 0]).sum())
    assert probs[1, 0] == pytest.approx(1.0)  # no overflow
    hotter = calibrated_probabilities(logits[:1], 2.0)
    assert hotter[0, 0] < probs[0, 0]  # a higher temperature flattens the distribution


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 40])  # both sides of the plain-Python path (<= 4 rows)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_edge_answers_are_the_stable_sort_of_the_calibrated_probabilities(rows, temperature):
    from edgekit.runtime.cascade import edge_answers

    rng = np.random.default_rng(rows)
    logits = (rng.normal(size=(rows, 6)) * 3).astype(np.float32)
    logits[0] = [2.0, 5.0, 5.0, -1.0, 0.0, 5.0]  # a three-way tie for first: the lowest index wins
    labels = ["a", "b", "c", "d", "e", "f"]
    probs = calibrated_probabilities(logits, temperature)
    for k in (1, 2, 6):
        tops, scores = edge_answers(logits, temperature, labels, k)
        assert len(tops) == rows
        for row, pairs, score in zip(probs, tops, scores):
            order = np.argsort(-row, kind="stable")[:k]
            assert [label for label, _ in pairs] == [labels[j] for j in order]
            assert [p for _, p in pairs] == pytest.approx(row[order].tolist(), rel=1e-6)
            assert score == pytest.approx(row.max(), rel=1e-6)
        assert tops[0][0][0] == "b"


def test_confident_texts_stay_at_the_edge_and_the_cloud_is_not_called():
    cloud = right_cloud()
    predictions = Cascade(KeywordModel(), cloud).classify(CONFIDENT)
    assert [p.route for p in predictions] == [Route.EDGE] * 3
    assert [p.label for p in predictions] == ["cancel_order", "track_order", "get_refund"]
    assert all(p.score == p.edge_score > 0.9 for p in predictions)
    assert all(p.model_name == "fake-edge" and p.model_version == "3" for p in predictions)
    assert cloud.calls == []


def test_unsure_texts_go_to_the_cloud_together_in_one_call():
    cloud = right_cloud()
    texts = [CONFIDENT[0], UNSURE_TEXTS[0], CONFIDENT[1], UNSURE_TEXTS[1]]
    predictions = Cascade(KeywordModel(), cloud).classify(texts, ClassifyOptions(top_k=3))
    assert len(cloud.calls) == 1 and cloud.calls[0][0] == UNSURE_TEXTS
    assert [p.route for p in predictions] == [Route.EDGE, Route.CLOUD, Route.EDGE, Route.CLOUD]
    assert [predictions[1].label, predictions[3].label] == list(UNSURE.values())
    cloudy = predictions[1]
    assert cloudy.score == pytest.approx(cloud_model().predict(texts[1])[1])
    assert cloudy.edge_score == pytest.approx(1 / 3)
    # top_k: the cloud's answer first, then the edge's other labels, no duplicates
    assert cloudy.top_k[0] == (cloudy.label, cloudy.score)
    assert [label for label, _ in cloudy.top_k] == ["cancel_order", "track_order", "get_refund"]
    assert cloudy.latency_ms >= predictions[0].latency_ms  # waited for the cloud too


def test_threshold_comes_from_request_then_settings_then_model():
    cloud = right_cloud()
    model = KeywordModel(threshold=0.99)  # the fake's confident score is ~0.965
    assert Cascade(model, cloud).classify(CONFIDENT[:1])[0].route is Route.CLOUD
    relaxed = Cascade(model, cloud, CascadeSettings(threshold=0.5))
    assert relaxed.threshold == 0.5
    assert relaxed.classify(CONFIDENT[:1])[0].route is Route.EDGE
    assert relaxed.classify(CONFIDENT[:1], ClassifyOptions(threshold=1.0))[0].route is Route.CLOUD
    assert relaxed.classify(UNSURE_TEXTS[:1], ClassifyOptions(threshold=0.0))[0].route is Route.EDGE


def test_without_cloud_or_permission_unsure_texts_are_answered_at_the_edge():
    cloud = right_cloud()
    no_permission = Cascade(KeywordModel(), cloud).classify(UNSURE_TEXTS, ClassifyOptions(allow_cloud=False))
    no_cloud = Cascade(KeywordModel(), None).classify(UNSURE_TEXTS)
    for predictions in (no_permission, no_cloud):
        assert [p.route for p in predictions] == [Route.EDGE, Route.EDGE]
        assert [p.label for p in predictions] == ["track_order", "track_order"]  # the edge's (wrong) guess
    assert cloud.calls == []


def test_cloud_error_degrades_to_the_edge_answer_or_fails_by_policy():
    outcomes: list[str] = []
    broken = FakeCloud(error=CloudUnavailable("cloud down"))
    predictions = Cascade(KeywordModel(), broken, on_cloud=outcomes.append).classify([CONFIDENT[0], UNSURE_TEXTS[0]])
    assert [p.route for p in predictions] == [Route.EDGE, Route.EDGE_CLOUD_FAILED]
    assert predictions[1].label == "track_order" and predictions[1].score == pytest.approx(1 / 3)
    assert outcomes == ["error"]

    strict = Cascade(KeywordModel(), broken, CascadeSettings(on_cloud_error="fail"))
    assert strict.settings.on_cloud_error is OnCloudError.FAIL
    with pytest.raises(CloudUnavailable, match="cloud down"):
        strict.classify(UNSURE_TEXTS)
    assert strict.classify(CONFIDENT)[0].route is Route.EDGE  # confident texts never need the cloud


def test_a_buggy_cloud_client_is_a_cloud_failure_not_a_crash():
    buggy = FakeCloud(error=KeyError("oops"))
    assert Cascade(KeywordModel(), buggy).classify(UNSURE_TEXTS[:1])[0].route is Route.EDGE_CLOUD_FAILED
    with pytest.raises(CloudUnavailable, match="KeyError") as info:
        Cascade(KeywordModel(), buggy, CascadeSettings(on_cloud_error="fail")).classify(UNSURE_TEXTS[:1])
    assert isinstance(info.value.__cause__, KeyError)
    short = FakeCloud()
    short.classify = lambda texts, timeout_s: [("x", 1.0)]  # one answer for two texts
    assert Cascade(KeywordModel(), short).classify(UNSURE_TEXTS)[0].route is Route.EDGE_CLOUD_FAILED


def test_a_slow_cloud_is_cut_off_at_the_timeout():
    outcomes: list[str] = []
    slow = FakeCloud(block=True)
    cascade = Cascade(KeywordModel(), slow, CascadeSettings(cloud_timeout_ms=50), on_cloud=outcomes.append)
    start = time.monotonic()
    predictions = cascade.classify(UNSURE_TEXTS)
    assert time.monotonic() - start < 0.05 + 0.5
    assert [p.route for p in predictions] == [Route.EDGE_CLOUD_FAILED] * 2
    assert slow.calls[0][1] == pytest.approx(0.05)
    assert outcomes == ["timeout"]


def test_the_callers_deadline_caps_the_cloud_timeout():
    cloud = right_cloud()
    cascade = Cascade(KeywordModel(), cloud, CascadeSettings(cloud_timeout_ms=300))
    cascade.classify(UNSURE_TEXTS[:1], time_remaining_s=0.1)
    cascade.classify(UNSURE_TEXTS[:1], time_remaining_s=30.0)
    # the cloud gets what is left of the deadline after the edge model ran (a little under 0.1 s)
    assert [timeout for _, timeout in cloud.calls] == [pytest.approx(0.1, abs=0.02), pytest.approx(0.3)]
    assert cloud.calls[0][1] <= 0.1
    outcomes: list[str] = []
    late = Cascade(KeywordModel(), cloud, on_cloud=outcomes.append).classify(UNSURE_TEXTS[:1], time_remaining_s=0.0)
    assert late[0].route is Route.EDGE_CLOUD_FAILED and outcomes == ["no_time_left"] and len(cloud.calls) == 2


def test_breaker_opens_after_consecutive_failures_then_half_opens_after_the_cooldown():
    clock, outcomes = ManualClock(), []
    cloud = FakeCloud(cloud_model().predict, error=CloudUnavailable("down"))
    settings = CascadeSettings(breaker_failures=2, breaker_cooldown_s=10)
    cascade = Cascade(KeywordModel(), cloud, settings, on_cloud=outcomes.append, clock=clock)
    ask = lambda: cascade.classify(UNSURE_TEXTS[:1])[0]  # noqa: E731

    assert ask().route is Route.EDGE_CLOUD_FAILED and ask().route is Route.EDGE_CLOUD_FAILED
    assert cascade.breaker.state == "open" and len(cloud.calls) == 2
    assert ask().route is Route.EDGE_CLOUD_FAILED and len(cloud.calls) == 2  # paused: not called
    clock.advance(10)
    assert cascade.breaker.state == "half_open"
    assert ask().route is Route.EDGE_CLOUD_FAILED and len(cloud.calls) == 3  # the trial fails...
    assert cascade.breaker.state == "open"  # ...and the breaker opens again at once
    clock.advance(10)
    cloud.error = None
    assert ask().route is Route.CLOUD and cascade.breaker.state == "closed"  # the trial succeeds
    assert ask().route is Route.CLOUD and len(cloud.calls) == 5
    assert outcomes == ["error", "error", "breaker_open", "error", "ok", "ok"]


def test_open_breaker_under_fail_policy_fails_fast():
    cloud = FakeCloud(error=CloudUnavailable("down"))
    settings = CascadeSettings(breaker_failures=1, on_cloud_error="fail")
    strict = Cascade(KeywordModel(), cloud, settings, clock=ManualClock())
    with pytest.raises(CloudUnavailable, match="down"):
        strict.classify(UNSURE_TEXTS[:1])
    with pytest.raises(CloudUnavailable, match="circuit open"):
        strict.classify(UNSURE_TEXTS[:1])
    assert len(cloud.calls) == 1


def test_half_open_breaker_lets_exactly_one_trial_through():
    clock = ManualClock()
    breaker = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    breaker.failure()
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow() and not breaker.allow()  # one trial; the next caller waits for its outcome
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_saturated_cloud_degrades_at_once_instead_of_queueing_even_under_fail_policy():
    outcomes: list[str] = []
    cloud = FakeCloud(cloud_model().predict, block=True)
    settings = CascadeSettings(max_cloud_inflight=1, cloud_timeout_ms=5000, on_cloud_error="fail")
    cascade = Cascade(KeywordModel(), cloud, settings, on_cloud=outcomes.append)
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(cascade.classify, UNSURE_TEXTS[:1])
        assert cloud.entered.wait(2)
        start = time.monotonic()
        shed = cascade.classify(UNSURE_TEXTS[1:])
        assert time.monotonic() - start < 0.5
        assert shed[0].route is Route.EDGE_CLOUD_FAILED and len(cloud.calls) == 1
        cloud.release.set()
        assert holder.result(2)[0].route is Route.CLOUD
    assert outcomes == ["saturated", "ok"]
    assert cascade.classify(UNSURE_TEXTS[1:])[0].route is Route.CLOUD  # the slot was given back


def test_logits_of_the_wrong_shape_are_a_model_error():
    model = KeywordModel()
    model.logits = lambda texts: np.zeros((len(texts), 2), dtype=np.float32)
    with pytest.raises(ModelError, match="shape"):
        Cascade(model).classify(["anything"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"cloud_timeout_ms": 0},
        {"on_cloud_error": "retry"},
        {"breaker_failures": 0},
        {"breaker_cooldown_s": -1},
        {"max_cloud_inflight": 0},
    ],
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ConfigError):
        CascadeSettings(**kwargs)


def test_a_model_with_a_nonpositive_temperature_is_refused():
    with pytest.raises(ConfigError, match="temperature"):
        Cascade(KeywordModel(temperature=0.0))


def test_threads_can_share_a_cascade():
    cascade = Cascade(KeywordModel(), right_cloud())
    texts = CONFIDENT + UNSURE_TEXTS
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: [p.label for p in cascade.classify(texts)], range(20)))
    assert all(r == ["cancel_order", "track_order", "get_refund", *UNSURE.values()] for r in results)
