"""Typed configuration of ``edgekit convert``, loadable from YAML (``--config``).

Every CLI option has a field here of the same name (dashes → underscores); options given on
the command line override the file. Unknown keys and bad values are refused, never guessed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

__all__ = ["ConvertConfig"]
_PATHS = ("model_dir", "train", "validation", "test", "out", "unlabeled", "student", "feedback", "feedback_baseline")


@dataclass(frozen=True)
class ConvertConfig:
    model_dir: Path
    train: Path
    validation: Path
    test: Path
    out: Path
    targets: tuple[str, ...] | None = None  # None: every registered format (edgekit.registry.FORMATS)
    # variants to try per format, e.g. {"onnx": ["fp32", "int8-dynamic"]}; absent = all
    variants: dict[str, list[str]] = field(default_factory=dict)
    unlabeled: Path | None = None
    # "auto" (probe the candidate starts, keep the best), "teacher-layers", a packaged name
    # (paraphrase-minilm-l3, minilm-l6) or a directory holding a smaller pretrained encoder
    student: Path | None = Path("auto")
    student_layers: int | None = None
    prune_vocab: bool | None = None  # None: prune if held-out answers do not change (converters/student.py)
    augment: bool = True
    epochs: int | None = None  # None: enough epochs for 1,500 optimizer steps (3..20), early stopping
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None  # None: 5 x learning_rate
    distill_temperature: float = 1.0
    alpha: float = 0.5
    calibrate_teacher: bool = True
    hidden_weight: float = 0.0
    # distillation's autocast: no | bf16 | auto (bf16 where the CPU/GPU multiplies bf16 in hardware).
    # banking77, 6-layer student: same validation curve and test accuracy (0.9341 vs 0.9334), about
    # half the time per epoch (benchmarks/RESULTS.md, benchmarks/train_precision.py)
    mixed_precision: str = "auto"
    teacher_cache: bool = True  # keep the teacher's outputs on disk (see converters/teacher_cache.py)
    max_length: int | None = None  # None: the data's 99th-percentile token length (<= 128)
    buckets: tuple[int, ...] | None = None  # TFLite lengths; None: chosen from the data
    max_accuracy_drop: float = 1.0  # points
    allow_accuracy_drop: bool = False
    max_cloud_rate: float | None = None
    cascade_tolerance: float = 0.2  # points, for the default threshold rule
    latency_texts: int = 40
    seed: int = 0
    text_field: str = "text"
    label_field: str = "label"
    progress: bool = True
    # what a server recorded with `serve --record DIR` (converters/feedback.py): the cloud's answers
    # join the transfer set, each text feedback_weight times; the report compares the new bundles
    # with feedback_baseline (the bundle in service) on those texts
    feedback: Path | None = None
    feedback_weight: float = 1.0
    feedback_baseline: Path | None = None

    def __post_init__(self) -> None:
        if self.targets is not None and not self.targets:
            raise ConfigError("give at least one target")
        if self.max_accuracy_drop < 0:
            raise ConfigError("--max-accuracy-drop must be >= 0")
        if self.max_cloud_rate is not None and not 0 <= self.max_cloud_rate <= 1:
            raise ConfigError("--max-cloud-rate must lie in [0, 1]")
        if self.max_length is not None and not 8 <= self.max_length <= 512:
            raise ConfigError("--max-length must lie in [8, 512]")
        if self.buckets is not None and (not self.buckets or min(self.buckets) < 4):
            raise ConfigError("--buckets must be lengths of at least 4")
        if self.student_layers is not None and self.student_layers < 1:
            raise ConfigError("--student-layers must be >= 1")
        if self.mixed_precision not in ("no", "bf16", "auto"):
            raise ConfigError(f"--mixed-precision must be no, bf16 or auto, got {self.mixed_precision!r}")
        if not (isinstance(self.feedback_weight, (int, float)) and math.isfinite(self.feedback_weight)
                and self.feedback_weight > 0):
            raise ConfigError(f"--feedback-weight must be a positive number, got {self.feedback_weight!r}")
        if self.feedback is None and (self.feedback_weight != 1.0 or self.feedback_baseline is not None):
            given = "--feedback-baseline" if self.feedback_baseline is not None else "--feedback-weight"
            raise ConfigError(f"{given} applies with --feedback DIR only")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> ConvertConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
        values = dict(data)
        for key in _PATHS:
            if values.get(key) is not None:
                values[key] = Path(values[key])
        for key in ("targets", "buckets"):
            if isinstance(values.get(key), str):
                values[key] = tuple(v.strip() for v in values[key].split(",") if v.strip())
            if values.get(key) is not None:
                values[key] = tuple(int(v) for v in values[key]) if key == "buckets" else tuple(values[key])
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and values.get(f.name) is None]
        if missing:
            raise ConfigError(f"{source}: missing required option(s) {', '.join(missing)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: Path, overrides: dict[str, Any]) -> ConvertConfig:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value")
        data = {k.replace("-", "_"): v for k, v in data.items()}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(data, source=str(path))

    def to_yaml(self) -> str:
        import yaml

        data = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}
        return yaml.safe_dump(data, sort_keys=False)
