"""ConvertConfig: every convert option, the feedback ones included, reads from and writes to YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.config import ConvertConfig
from edgekit.errors import ConfigError

REQUIRED = {"model_dir": "m", "train": "t.jsonl", "validation": "v.jsonl", "test": "e.jsonl", "out": "out"}


def test_feedback_options_come_from_a_config_file_and_go_back_into_the_written_one(tmp_path):
    path = tmp_path / "convert.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in REQUIRED.items())
                    + "feedback: records\nfeedback-weight: 2.5\nfeedback_baseline: bundles/onnx-int8\n")
    config = ConvertConfig.from_yaml(path, {})
    assert (config.feedback, config.feedback_weight, config.feedback_baseline) == (
        Path("records"), 2.5, Path("bundles/onnx-int8"))
    (tmp_path / "again.yaml").write_text(config.to_yaml())
    assert ConvertConfig.from_yaml(tmp_path / "again.yaml", {}) == config
    overridden = ConvertConfig.from_yaml(path, {"feedback_weight": 1.0})  # the command line wins
    assert overridden.feedback_weight == 1.0 and overridden.feedback == Path("records")


def test_no_feedback_by_default():
    config = ConvertConfig.from_mapping(dict(REQUIRED))
    assert (config.feedback, config.feedback_weight, config.feedback_baseline) == (None, 1.0, None)


@pytest.mark.parametrize("extra, message", [
    ({"feedback": "r", "feedback_weight": 0}, "--feedback-weight must be a positive number, got 0"),
    ({"feedback": "r", "feedback_weight": float("nan")}, "--feedback-weight must be a positive number"),
    ({"feedback_weight": 2.0}, "--feedback-weight applies with --feedback DIR only"),
    ({"feedback_baseline": "b"}, "--feedback-baseline applies with --feedback DIR only"),
])
def test_bad_feedback_options_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        ConvertConfig.from_mapping({**REQUIRED, **extra})
