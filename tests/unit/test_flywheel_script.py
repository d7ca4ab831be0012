"""benchmarks/flywheel.py (issue 15's flywheel scenario): the recording threshold for a cloud budget,
the control's options, the summary with and without a control, the verdict and the markdown table."""

from __future__ import annotations

import importlib.util
import json
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.config import ConvertConfig
from edgekit.errors import ConfigError, DataError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "flywheel.py"


@pytest.fixture(scope="module")
def fly():
    spec = importlib.util.spec_from_file_location("benchmarks_flywheel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


# -- the recording threshold ---------------------------------------------------------------------------


def test_budget_threshold_is_the_quantile_of_the_scores(fly):
    scores = [i / 100 for i in range(101)]  # 0.00, 0.01, ..., 1.00
    assert fly.budget_threshold(scores, 0.10) == pytest.approx(0.10)
    assert fly.budget_threshold(list(reversed(scores)), 0.25) == pytest.approx(0.25)  # order does not matter
    assert fly.budget_threshold([0.2, 0.4], 0.5) == pytest.approx(0.3)  # interpolated between two scores


def test_budget_threshold_sends_about_the_budget_to_the_cloud(fly):
    scores = np.random.default_rng(0).beta(8, 2, 1000)  # mostly confident, as a calibrated edge is
    for budget in (0.05, 0.10, 0.30):
        threshold = fly.budget_threshold(scores.tolist(), budget)
        assert abs(np.mean(scores < threshold) - budget) <= 0.002  # the cascade asks when score < threshold


def test_budget_zero_keeps_the_fitted_threshold(fly):
    assert fly.budget_threshold([0.3, 0.9], 0.0) is None
    assert fly.budget_threshold([], 0.0) is None  # nothing to replay for budget 0


@pytest.mark.parametrize("budget", [-0.1, 1.0, 1.5, float("nan")])
def test_budget_outside_zero_one_is_refused(fly, budget):
    with pytest.raises(ConfigError, match=r"record budget must lie in \[0, 1\)"):
        fly.budget_threshold([0.5, 0.6], budget)


def test_budget_threshold_needs_finite_scores(fly):
    with pytest.raises(DataError, match="from 0 edge scores"):
        fly.budget_threshold([], 0.1)
    with pytest.raises(DataError, match="1 not finite"):
        fly.budget_threshold([0.5, float("nan"), 0.7], 0.1)


def test_recording_threshold_replays_validation_through_the_edge_alone(fly, monkeypatch):
    calls = []

    def fake_replay(address, texts, *, allow_cloud, request_size, threshold=None):
        calls.append({"texts": list(texts), "allow_cloud": allow_cloud, "size": request_size, "threshold": threshold})
        return [{"label": "x", "route": "EDGE", "score": 0.0, "edge_score": (i + 1) / 10} for i in range(len(texts))]

    monkeypatch.setattr(fly, "replay", fake_replay)
    monkeypatch.setattr(fly, "threshold_of", lambda address: 0.28)
    validation = [{"text": f"t{i}", "label": "x"} for i in range(10)]  # edge scores 0.1 .. 1.0
    got = fly.recording_threshold("edge:1", validation, 0.2, 1)
    assert calls == [{"texts": [f"t{i}" for i in range(10)], "allow_cloud": False, "size": 1, "threshold": None}]
    assert got["record_budget"] == 0.2 and got["fitted_threshold"] == 0.28
    assert got["record_threshold"] == pytest.approx(0.28)  # the 0.2-quantile of 0.1 .. 1.0
    assert got["validation_cloud_rate"] == pytest.approx(0.2)  # 0.1 and 0.2 fall below it

    # a budget whose quantile falls below the fitted threshold records at the fitted one: the budget
    # raises the cloud share, never lowers it under what the server would send anyway
    got = fly.recording_threshold("edge:1", validation, 0.1, 1)
    assert got["budget_quantile"] == pytest.approx(0.19) and got["record_threshold"] == 0.28
    assert got["validation_cloud_rate"] == pytest.approx(0.2)

    calls.clear()
    assert fly.recording_threshold("edge:1", validation, 0.0, 1) == {
        "record_budget": 0.0, "record_threshold": 0.28, "fitted_threshold": 0.28}
    assert calls == []  # budget 0: no validation replay


def test_replay_sends_the_threshold_and_returns_the_edge_score(fly, monkeypatch):
    import edgekit.runtime.client as client_module
    from edgekit.runtime.types import Prediction, Route

    sent = []

    class FakeClient:
        def __init__(self, address, timeout_s):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def classify(self, texts, allow_cloud=True, threshold=None):
            sent.append((list(texts), allow_cloud, threshold))
            return [Prediction(label="cloud_label", score=0.9, top_k=(("cloud_label", 0.9),), route=Route.CLOUD,
                               edge_score=0.25, latency_ms=1.0, model_name="m", model_version="1") for _ in texts]

    monkeypatch.setattr(client_module, "EdgeClient", FakeClient)
    answers = fly.replay("edge:1", ["a", "b", "c"], allow_cloud=True, request_size=2, threshold=0.4)
    assert sent == [(["a", "b"], True, 0.4), (["c"], True, 0.4)]
    assert answers[0] == {"label": "cloud_label", "route": "CLOUD", "score": pytest.approx(0.9),
                          "edge_score": pytest.approx(0.25)}
    fly.replay("edge:1", ["a"], allow_cloud=False, request_size=1)
    assert sent[-1] == (["a"], False, None)  # no threshold given: the server's own


# -- the control ---------------------------------------------------------------------------------------


def test_control_seed_is_one_above_converts_default(fly):
    assert fly.convert_default_seed() == inspect.signature(ConvertConfig).parameters["seed"].default
    default = fly.convert_default_seed()
    options, seed = fly.control_options(["--targets", "onnx"], default)
    assert seed == default + 1 and options == ["--targets", "onnx", "--seed", str(default + 1)]


def test_control_seed_follows_a_seed_given_to_convert(fly):
    options, seed = fly.control_options(["--seed", "7", "--epochs", "1"], 0)
    assert (options, seed) == (["--seed", "7", "--epochs", "1", "--seed", "8"], 8)
    assert fly.control_options(["--seed=3"], 0)[1] == 4
    assert fly.control_options(["--seed", "3", "--seed=5"], 0)[1] == 6  # the last one wins, as in click
    with pytest.raises(ConfigError, match="--seed must be an integer, got 'x'"):
        fly.control_options(["--seed", "x"], 0)


# -- the summary and the verdict -----------------------------------------------------------------------


def _phase(cloud: int, cascade: int, edge: int, agreement: float, threshold: float = 0.3, n: int = 10,
           failed: int = 0) -> dict:
    """One bundle's replays on n fresh texts: the first ``cloud`` went to the cloud, the first ``cascade``
    answers of the cascade and the first ``edge`` of the edge alone are right."""
    return {"threshold": threshold,
            "fresh": {"texts": n, "cloud_rate": cloud / n, "cloud_failed": failed, "cascade_accuracy": cascade / n},
            "edge_accuracy": edge / n, "recorded_agreement": agreement,
            "per_text": {"cloud": [i < cloud for i in range(n)], "cascade_right": [i < cascade for i in range(n)],
                         "edge_right": [i < edge for i in range(n)], "recorded_agree": []}}


def test_summary_without_control(fly):
    before, after = _phase(3, 8, 7, 0.2), _phase(1, 8, 8, 0.9)
    summary = fly.summarize(before, after, seed=0)
    assert list(summary["changes"]) == ["after - before"]
    ch = summary["changes"]["after - before"]
    assert ch["cloud_rate"] == pytest.approx(-0.2) and ch["cascade_accuracy"] == 0
    assert ch["edge_accuracy"] == pytest.approx(0.1) and ch["recorded_agreement"] == pytest.approx(0.7)
    assert ch["cascade_accuracy_ci95"] == [0.0, 0.0]  # the same texts right: no spread
    low, high = ch["cloud_rate_ci95"]
    assert -1 <= low <= -0.2 <= high <= 0  # after never calls the cloud where before did not
    assert summary["cloud_rate_below_before"] is True and summary["cloud_rate_below_control"] is None
    assert summary["cascade_accuracy_held"] is True and summary["flywheel_holds"] is True


def test_summary_with_control(fly):
    before, control, after = _phase(3, 8, 7, 0.2), _phase(2, 7, 7, 0.3), _phase(1, 8, 8, 0.9)
    summary = fly.summarize(before, after, seed=0, control=control)
    assert list(summary["changes"]) == ["after - before", "after - control", "control - before"]
    assert summary["changes"]["after - control"]["cloud_rate"] == pytest.approx(-0.1)
    assert summary["changes"]["after - control"]["cascade_accuracy"] == pytest.approx(0.1)
    assert summary["changes"]["control - before"]["cloud_rate"] == pytest.approx(-0.1)
    assert summary["changes"]["control - before"]["recorded_agreement"] == pytest.approx(0.1)
    assert summary["cloud_rate_below_control"] is True and summary["flywheel_holds"] is True
    # the same seed, the same intervals: reproducible
    assert fly.summarize(before, after, seed=0, control=control) == summary


def _result(fly, before, after, control=None, budget=0.1) -> dict:
    production = {"texts": 4499, "cloud_rate": 0.101, "cloud_failed": 0, "cascade_accuracy": 0.93,
                  "seconds": 60.0, "recorded": 454, "record_budget": budget, "record_threshold": 0.5123,
                  "fitted_threshold": 0.2809, "budget_quantile": 0.5123}
    if budget:
        production["validation_cloud_rate"] = 0.1
    return {
        "settings": {"dataset": "banking77", "bundle": "onnx-int8", "first_texts": 4504,
                     "teacher_name": "flywheel-teacher", "teacher_trained_on": "the first part only",
                     "feedback_weight": None, "request_size": 1, "control_seed": 1 if control else None},
        "production": production, "cloud_accuracy_fresh": 0.92, "before": before, "control": control,
        "after": after, "seconds": {"convert_before": "(reused)", "convert_after": "1310 s",
                                    **({"convert_control": "952 s"} if control else {})},
        "summary": fly.summarize(before, after, 0, control),
    }


def test_verdict_holds_names_both_comparisons(fly):
    result = _result(fly, _phase(3, 8, 7, 0.2), _phase(1, 8, 8, 0.9), _phase(2, 7, 7, 0.3))
    assert fly.verdict_line(result) == (
        "**Flywheel holds**: the cloud rate after (10.00%) is below before's (30.00%) and the control's (20.00%), "
        "and the cascade accuracy after (0.8000) is not below before's (0.8000).")


def test_verdict_fails_when_the_control_does_as_well(fly):
    result = _result(fly, _phase(3, 8, 7, 0.2), _phase(1, 8, 8, 0.9), _phase(1, 8, 7, 0.3))
    assert result["summary"]["cloud_rate_below_before"] is True
    assert result["summary"]["cloud_rate_below_control"] is False and result["summary"]["flywheel_holds"] is False
    assert fly.verdict_line(result) == (
        "**Flywheel does not hold**: the cloud rate after (10.00%) is not below the control's (10.00%): "
        "a re-conversion without `--feedback` does as well.")


def test_verdict_fails_on_a_cascade_drop_and_on_an_unchanged_cloud_rate(fly):
    result = _result(fly, _phase(3, 8, 7, 0.2), _phase(3, 7, 8, 0.9))
    assert result["summary"]["flywheel_holds"] is False
    line = fly.verdict_line(result)
    assert line.startswith("**Flywheel does not hold**: the cloud rate after (30.00%) is not below before's "
                           "(30.00%); ")
    assert line.endswith("the cascade accuracy after (0.7000) is below before's (0.8000; within noise: the interval "
                         "includes 0).")
    # a drop on every text that differs is beyond noise
    n = 200
    before, after = _phase(20, 190, 180, 0.2, n=n), _phase(10, 150, 180, 0.9, n=n)
    result = _result(fly, before, after)
    assert result["summary"]["cascade_accuracy_drop_within_noise"] is False
    assert fly.verdict_line(result) == ("**Flywheel does not hold**: the cascade accuracy after (0.7500) is below "
                                        "before's (0.9500; beyond noise).")


# -- the markdown ----------------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_markdown_with_control_has_three_columns_and_three_changes(fly):
    result = _result(fly, _phase(3, 8, 7, 0.2), _phase(1, 8, 8, 0.9, threshold=0.27), _phase(2, 7, 7, 0.3))
    markdown = fly.format_markdown(result)
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert _cells(table[0]) == ["", "before", "control (`--seed 1`, no `--feedback`)", "after (`--feedback`)",
                                "after - before (95% interval)", "after - control (95% interval)",
                                "control - before (run-to-run spread, 95% interval)"]
    assert table[1] == "|---|---:|---:|---:|---:|---:|---:|"
    assert all(len(_cells(line)) == 7 for line in table)
    cloud = _cells(table[2])
    assert cloud[:4] == ["cloud-call rate at the fitted threshold (fresh traffic, 10 texts)", "30.0%", "20.0%", "10.0%"]
    assert [cell.split(" (")[0] for cell in cloud[4:]] == ["-20.00 pts", "-10.00 pts", "-10.00 pts"]
    assert all(cell.endswith(")") for cell in cloud[4:])  # each with its interval
    # no per-text edge scores in these phases: the matched rate is not known
    assert _cells(table[3]) == ["cloud-call rate for the cascade to match the cloud model alone (fresh traffic, 0.9200)",
                                "–", "–", "–", "", "", ""]
    assert _cells(table[6])[1:] == ["0.2000", "0.3000", "0.9000", "+70.00 pts", "+60.00 pts", "+10.00 pts"]
    assert _cells(table[6])[0] == "agreement with the cloud on the 454 recorded texts (edge alone; in-sample after)"
    assert _cells(table[7]) == ["fitted threshold (validation)", "0.3000", "0.3000", "0.2700", "", "", ""]
    assert ("at threshold 0.5123 (the higher of the 10% quantile of the edge's scores on the validation split, "
            "0.5123, and the fitted threshold 0.2809; it sent 10.0% of the validation split to the cloud): 10.1% "
            "sent to the cloud, 454 recorded") in markdown
    assert "as a control" in markdown and "**Flywheel holds**" in markdown
    assert "Convert wall time: before (reused), control 952 s, after 1310 s." in markdown
    assert "Warning" not in markdown


def test_markdown_without_control_keeps_the_two_column_table(fly):
    result = _result(fly, _phase(3, 8, 7, 0.2), _phase(1, 8, 8, 0.9, failed=2), budget=0.0)
    result["production"]["record_threshold"] = 0.2809
    markdown = fly.format_markdown(result)
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[0] == "| | before | after (`--feedback`) | change (95% paired bootstrap interval) |"
    assert table[1] == "|---|---:|---:|---:|"
    assert len(table) == 8 and all(len(_cells(line)) == 4 for line in table)
    assert _cells(table[4])[:3] == ["cascade accuracy (fresh traffic)", "0.8000", "0.8000"]
    assert "at the bundle's fitted threshold (0.2809): 10.1% sent to the cloud" in markdown
    assert "control" not in markdown
    assert "Convert wall time: before (reused), after 1310 s." in markdown
    assert "Warning: 2 cloud calls failed (EDGE_CLOUD_FAILED)" in markdown


def _scored(labels: list[str], scores: list[float]) -> dict:
    return {"per_text": {"edge_label": labels, "edge_score": scores}}


GOLD, CLOUD = ["a", "b", "c", "d"], ["a", "b", "c", "x"]  # the cloud alone: 0.75


def test_the_matched_cloud_rate_sends_the_least_sure_texts_until_the_cloud_is_matched(fly):
    sure = _scored(["a", "y", "c", "d"], [0.9, 0.1, 0.8, 0.7])  # 0.75 alone: no cloud needed
    unsure = _scored(["y", "y", "c", "d"], [0.2, 0.1, 0.9, 0.8])  # 0.5 alone; text 1 to the cloud: 0.75
    assert fly.matched_cloud_rate(sure, CLOUD, GOLD) == 0.0
    assert fly.matched_cloud_rate(unsure, CLOUD, GOLD) == 0.25
    # a resample of the texts, with its own target (the cloud right on all three: 1.0); the two
    # copies of text 1 share one score, so they go to the cloud together
    assert fly.matched_cloud_rate(unsure, CLOUD, GOLD, np.array([1, 1, 2])) == pytest.approx(2 / 3)


def test_the_matched_change_has_a_paired_interval(fly):
    sure = _scored(["a", "y", "c", "d"], [0.9, 0.1, 0.8, 0.7])
    unsure = _scored(["y", "y", "c", "d"], [0.2, 0.1, 0.9, 0.8])
    change = fly.matched_change(unsure, sure, CLOUD, GOLD, seed=0, resamples=200)
    assert change["matched_cloud_rate"] == -0.25
    low, high = change["matched_cloud_rate_ci95"]
    assert -1 <= low <= -0.25 <= high <= 0


# -- the command line ------------------------------------------------------------------------------------


def test_command_refuses_a_budget_of_one_before_any_work(fly, tmp_path):
    result = CliRunner().invoke(fly.main, ["--record-budget", "1", "--data", str(tmp_path / "none")])
    assert result.exit_code == 2 and "--record-budget" in result.output
    help_text = CliRunner().invoke(fly.main, ["--help"]).output
    assert "--control / --no-control" in help_text and "--record-budget" in help_text


def test_new_intents_keep_a_few_texts_for_the_edge_and_all_for_the_cloud(fly, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    train = [{"text": f"{label} text {i}", "label": label} for label in "abcdef" for i in range(10)]
    for split, rows in (("train", train), ("validation", train[::5]), ("test", train[::2])):
        (source / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    parts = fly.prepare_data(source, tmp_path / "out", 0.5, 0, new=2, new_keep=3)
    chosen = parts["new_intents"]
    assert len(chosen) == 2 and chosen == sorted(chosen) and set(chosen) <= set("abcdef")
    count = lambda rows, label: sum(r["label"] == label for r in rows)  # noqa: E731
    for label in "abcdef":
        assert count(parts["teacher_train"], label) == 5  # the cloud model's first part: every intent whole
        assert count(parts["train"], label) == (3 if label in chosen else 5)
        assert count(parts["traffic"], label) == 5  # production traffic as it came
    assert parts["train"] == [r for r in parts["teacher_train"] if r in parts["train"]]  # order kept
    assert fly.read_rows(tmp_path / "out" / "teacher_train.jsonl") == parts["teacher_train"]
    assert fly.prepare_data(source, tmp_path / "again", 0.5, 0, new=2)["new_intents"] == chosen  # seeded
    assert fly.prepare_data(source, tmp_path / "none", 0.5, 0)["train"] == parts["teacher_train"]
    with pytest.raises(ConfigError, match="--new-intents 6: the data has 6 intents"):
        fly.prepare_data(source, tmp_path / "all", 0.5, 0, new=6)


def test_markdown_of_a_result_from_before_session_10_names_the_quantile_alone(fly):
    """Results written before the threshold became max(quantile, fitted) have no budget_quantile:
    their text must not claim the higher of the two was taken."""
    result = _result(fly, _phase(3, 8, 7, 0.2), _phase(1, 8, 8, 0.9, threshold=0.27))
    del result["production"]["budget_quantile"]
    markdown = fly.format_markdown(result)
    assert ("at threshold 0.5123 (the 10% quantile of the edge's scores on the validation split; fitted 0.2809; "
            "it sent 10.0% of the validation split to the cloud)") in markdown
    assert "the higher of" not in markdown
