"""The transport-neutral data plane: request limits, readiness, model info and metrics."""

from __future__ import annotations

import pytest

from edgekit.errors import CloudUnavailable, InvalidInput
from edgekit.runtime.batching import BatchSettings
from edgekit.runtime.cascade import CascadeSettings
from edgekit.runtime.dataplane import DataPlane, Limits, make_options
from edgekit.runtime.types import ClassifyOptions, Route
from tests.fakes import CONFIDENT, UNSURE, FakeCloud, KeywordModel, cloud_model


def plane(**kwargs) -> DataPlane:
    kwargs.setdefault("batching", BatchSettings(max_batch_size=1))
    return DataPlane(kwargs.pop("model", KeywordModel()), **kwargs)


def sample(dp: DataPlane, name: str, **labels: str) -> float:
    value = dp.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        ([], "no texts"),
        (["ok"] * 5, "5 texts in one request; at most 4 are allowed"),
        (["ok", ""], r"texts\[1\] is empty or whitespace only"),
        (["ok", "ok", " \t\n"], r"texts\[2\] is empty or whitespace only"),
        (["ok", "x" * 11], r"texts\[1\] has 11 characters; at most 10 are allowed"),
        (["ok", 7], r"texts\[1\] must be a string, got int"),
        ("just one string", "must be a list of strings, got str"),
        (None, "must be a list of strings, got NoneType"),
    ],
)
def test_requests_beyond_the_limits_are_refused_with_a_reason(texts, reason):
    model = KeywordModel()
    dp = plane(model=model, limits=Limits(max_texts=4, max_chars=10))
    with pytest.raises(InvalidInput, match=reason):
        dp.classify(texts)
    assert model.batch_sizes == []  # refused before the model ran
    assert sample(dp, "edgekit_requests_total", backend="fake", status="invalid_input") == 1


def test_requests_at_the_limits_are_served():
    dp = plane(limits=Limits(max_texts=4, max_chars=10))
    assert len(dp.classify(["x" * 10] * 4)) == 4


def test_default_limits_are_64_texts_of_2000_characters():
    assert Limits() == Limits(max_texts=64, max_chars=2000)


@pytest.mark.parametrize(("kwargs", "reason"), [({"top_k": 0}, "top_k"), ({"threshold": 2.0}, "threshold")])
def test_bad_options_are_invalid_input(kwargs, reason):
    with pytest.raises(InvalidInput, match=reason):
        make_options(**kwargs)
    assert make_options(top_k=2, allow_cloud=False, threshold=0.5) == ClassifyOptions(2, False, 0.5)


def test_warm_up_runs_the_model_once_and_makes_the_plane_ready_without_counting_a_request():
    model = KeywordModel()
    dp = plane(model=model, warmup_texts=["a", "b"])
    assert not dp.ready
    dp.warm_up()
    assert dp.ready and model.batch_sizes == [2]
    assert sample(dp, "edgekit_requests_total", backend="fake", status="ok") == 0


def test_model_info_reports_the_threshold_in_force():
    assert plane().model_info().threshold == 0.6
    info = plane(cascade=CascadeSettings(threshold=0.8)).model_info()
    assert info.threshold == 0.8 and info.name == "fake-edge" and info.labels == ("track_order", "cancel_order", "get_refund")


def test_model_busy_seconds_count_the_engine_calls_only():
    """edgekit_model_busy_seconds_total sums the time in the model's calls (its rate is the model's
    busy fraction), not the request's time around them."""
    import time

    class Slow(KeywordModel):
        def logits(self, texts):
            time.sleep(0.05)
            return super().logits(texts)

    dp = plane(model=Slow(), batching=BatchSettings(max_batch_size=8))
    assert sample(dp, "edgekit_model_busy_seconds_total") == 0.0
    dp.classify([CONFIDENT[0]])
    dp.classify([CONFIDENT[0], CONFIDENT[1]])
    busy = sample(dp, "edgekit_model_busy_seconds_total")
    assert 0.1 <= busy < 0.5, busy
    dp.close()


def test_model_busy_seconds_count_overlapping_calls_once_with_batching_off():
    """With batching off concurrent requests call the model together (they queue on its lock):
    the busy time is the time in which any call ran, not the sum of the calls' times. Checked to
    fail: summed, four overlapping 0.1-s calls count about 0.4 s."""
    import threading
    import time

    class Slow(KeywordModel):
        def logits(self, texts):
            time.sleep(0.1)
            return super().logits(texts)

    dp = plane(model=Slow(), batching=BatchSettings(max_batch_size=1))
    threads = [threading.Thread(target=dp.classify, args=([CONFIDENT[0]],)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    busy = sample(dp, "edgekit_model_busy_seconds_total")
    assert 0.1 <= busy < 0.3, busy
    dp.close()


def test_metrics_count_requests_routes_batches_and_cloud_calls():
    cloud = FakeCloud(cloud_model().predict)
    dp = plane(cloud=cloud, batching=BatchSettings(max_batch_size=8, max_wait_ms=0))
    predictions = dp.classify([CONFIDENT[0], *UNSURE])
    assert [p.route for p in predictions] == [Route.EDGE, Route.CLOUD, Route.CLOUD]
    assert sample(dp, "edgekit_requests_total", backend="fake", status="ok") == 1
    assert sample(dp, "edgekit_predictions_total", route="EDGE", backend="fake") == 1
    assert sample(dp, "edgekit_predictions_total", route="CLOUD", backend="fake") == 2
    assert sample(dp, "edgekit_prediction_latency_seconds_count", route="CLOUD", backend="fake") == 2
    assert sample(dp, "edgekit_batch_size_count") == 1 and sample(dp, "edgekit_batch_size_sum") == 3
    assert sample(dp, "edgekit_cloud_calls_total", outcome="ok") == 1

    cloud.error = CloudUnavailable("down")
    assert dp.classify(list(UNSURE))[0].route is Route.EDGE_CLOUD_FAILED
    assert sample(dp, "edgekit_cloud_calls_total", outcome="error") == 1
    assert sample(dp, "edgekit_predictions_total", route="EDGE_CLOUD_FAILED", backend="fake") == 2
    assert sample(dp, "edgekit_cloud_breaker_open") == 0
    dp.close()


def test_failed_cloud_under_fail_policy_is_counted_and_raised():
    dp = plane(cloud=FakeCloud(error=CloudUnavailable("down")), cascade=CascadeSettings(on_cloud_error="fail"))
    with pytest.raises(CloudUnavailable):
        dp.classify(list(UNSURE))
    assert sample(dp, "edgekit_requests_total", backend="fake", status="cloud_unavailable") == 1


def test_each_plane_has_its_own_registry():
    first, second = plane(), plane()
    first.classify(CONFIDENT)
    assert sample(first, "edgekit_requests_total", backend="fake", status="ok") == 1
    assert sample(second, "edgekit_requests_total", backend="fake", status="ok") == 0


def test_close_finishes_and_closes_what_the_plane_owns():
    model, cloud = KeywordModel(), FakeCloud()
    dp = plane(model=model, cloud=cloud, batching=BatchSettings(max_batch_size=4, max_wait_ms=1))
    dp.classify(CONFIDENT)
    dp.close()
    assert model.closed and cloud.closed
