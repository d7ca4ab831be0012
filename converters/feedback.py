"""Re-distilling from what the cloud answered (issue 15, point 4): ``edgekit convert --feedback DIR``.

``edgekit serve --record DIR`` keeps, for each query the edge sent to the cloud, the text
(redacted), the edge's top-k, the cloud's label and score and the bundle version that asked. Those
are the texts the edge finds hard, labelled for free. ``convert --feedback DIR`` reads them back
(:func:`read_feedback`) and adds them to the transfer set (:func:`build_feedback`):

- **Soft targets from the cloud's answer.** A record holds the cloud's label and its score, not
  its whole distribution, so the target puts the score on that label and spreads the rest evenly
  over the others (the least committal distribution that says what the record says; label
  smoothing). The teacher at hand is *not* asked instead, although it is loaded anyway: the cloud
  in service may be another model (retrained, larger, a Triton deployment, a reviewed answer), and
  what it answered on production traffic is the signal the flywheel is for. The teacher still
  scores those texts once, to report how often it agrees with the recorded answers (a low figure
  says the cloud in service is not this teacher). The target enters distillation as
  log-probabilities in place of the teacher's logits, so the teacher temperature that scales every
  teacher target (``--calibrate-teacher``) scales it alike: both are softmax outputs at T = 1.
- **Deduplicated.** Texts are compared normalised (Unicode NFKC, case-folded, whitespace
  collapsed); repeated texts become one, their targets averaged. A recorded text that is a training
  text is left out (its gold label is already in the transfer set), and so is one that is a
  validation or test text (adding it would leak the splits that choose the epoch, the threshold
  and the gate). Records whose label the model does not have are skipped with a counted warning.
  Texts the recorder redacted (``<EMAIL>``, ``<PHONE>``, ``<NUMBER>``) stay as recorded.
- **Weighted** (``--feedback-weight W``, default 1): each recorded text enters the transfer set W
  times per epoch (a fraction: a seeded share of the texts once more), KD-only like the perturbed
  copies of the training texts. Repetition rather than a per-example loss weight because the
  transfer set is assembled by :mod:`edgekit.converters.training.student` from the pipeline's data
  (texts and teacher outputs, no weights); in expectation it is the same gradient.

With ``--feedback-baseline BUNDLE_DIR`` (the bundle in service; its manifest version is checked
against the versions in the records) the report compares it with every new bundle
(:func:`compare_bundles`): on the recorded texts, agreement with the cloud, the share each would
send to the cloud again at its own threshold, and the cloud rate the new one needs to match the
baseline's cascade agreement with the cloud; on the test split (gold labels, neither bundle trained
on it), accuracy, cloud rate and cascade accuracy at each threshold, and the cloud rate at which
the new bundle's cascade is as accurate as the baseline's. The new bundle learned the recorded
texts, so the figures on them are in-sample; the test split and ``benchmarks/flywheel.py`` (fresh
traffic) are the held-out measures.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError, ConversionError, DataError
from edgekit.metrics import cloud_rate_for_accuracy  # the report's comparison uses it

__all__ = [
    "Answers",
    "CloudAnswer",
    "FeedbackSet",
    "FeedbackSettings",
    "build_feedback",
    "bundle_answers",
    "check_baseline",
    "cloud_rate_for_accuracy",
    "compare_bundles",
    "normalise",
    "read_feedback",
    "soft_target",
]

log = logging.getLogger(__name__)

SOFT_TARGET_RULE = ("the cloud's score on its label, the rest spread evenly over the other labels; "
                    "scaled by the teacher temperature like every teacher target")
_MAX_SCORE = 1.0 - 1e-4  # a recorded 1.0 keeps some mass elsewhere (finite log-probabilities)


@dataclass(frozen=True)
class FeedbackSettings:
    """``--feedback DIR``, ``--feedback-weight W``, ``--feedback-baseline BUNDLE_DIR``."""

    directory: Path
    weight: float = 1.0
    baseline: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        if self.baseline is not None:
            object.__setattr__(self, "baseline", Path(self.baseline))
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"--feedback-weight must be a positive number, got {self.weight!r}")


@dataclass(frozen=True)
class CloudAnswer:
    """One record: the text as recorded and what the cloud answered."""

    text: str
    label: str
    score: float
    version: str


def read_feedback(directory: Path) -> list[CloudAnswer]:
    """Every record in ``directory`` (``edgekit serve --record``), oldest first.

    ConfigError, in one line, for a directory that is missing, holds no record file or no record,
    or has a line that is not a record (a torn last line, never acknowledged, is skipped as
    :func:`edgekit.runtime.recorder.read_records` does).
    """
    from edgekit.runtime.recorder import read_records

    directory = Path(directory)
    where = f"--feedback {directory}"
    if not directory.is_dir():
        raise ConfigError(f"{where}: " + ("not a directory" if directory.exists() else "no such directory"),
                          hint="give the directory of edgekit serve --record DIR")
    try:
        if not any(directory.glob("records-*.jsonl")):
            raise ConfigError(f"{where}: no record files (records-*.jsonl, written by edgekit serve --record)")
        answers = [_answer(record, n, where) for n, record in enumerate(read_records(directory, strict=True), 1)]
    except DataError as exc:
        raise ConfigError(f"{where}: {exc.message}") from exc
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the records ({exc})") from exc
    if not answers:
        raise ConfigError(f"{where}: the record files hold no whole record")
    return answers


def _answer(record: dict, number: int, where: str) -> CloudAnswer:
    text, label, score = record.get("text"), record.get("cloud_label"), record.get("cloud_score")
    problem = ("no text" if not isinstance(text, str) or not text.strip() else
               "no cloud_label" if not isinstance(label, str) or not label else
               f"cloud_score {score!r} is not a number in [0, 1]"
               if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1 else None)
    if problem:
        raise ConfigError(f"{where}: record {number} (id {record.get('id', '?')}) is not a cloud answer: {problem}")
    return CloudAnswer(text, label, float(score), str(record.get("version", "")))


def normalise(text: str) -> str:
    """The form two texts are compared in: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def soft_target(label: int, score: float, num_labels: int) -> np.ndarray:
    """``score`` on ``label`` (at least 1 / num_labels: it was the cloud's top answer), the rest spread evenly."""
    if num_labels == 1:
        return np.ones(1, np.float64)
    top = min(max(float(score), 1.0 / num_labels), _MAX_SCORE)
    target = np.full(num_labels, (1.0 - top) / (num_labels - 1))
    target[label] = top
    return target


@dataclass
class FeedbackSet:
    """The recorded texts that go into the transfer set, one per normalised text."""

    directory: Path
    weight: float
    texts: list[str]  # as recorded (redacted), first occurrence of each normalised text
    targets: np.ndarray  # [texts, labels] soft targets (probabilities)
    counts: dict[str, int]  # read, unknown_label, in_training, in_held_out, duplicates, used
    versions: dict[str, int]  # bundle version -> records it asked
    unknown_labels: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)  # the texts as they enter the transfer set (weighted)
    teacher_agreement: float | None = None  # the teacher's label = the recorded cloud label (set while scoring)

    @property
    def cloud_ids(self) -> np.ndarray:
        return self.targets.argmax(-1)

    def teacher_outputs(self, texts: Sequence[str], score: Callable[[list[str]], Any]):
        """The transfer set's teacher outputs with the recorded texts' rows replaced by their soft targets.

        ``score(texts)`` returns the teacher's outputs (``TeacherOutputs``). The other texts are
        scored as one list, the same list a conversion without ``--feedback`` scores (so a first
        conversion's cache serves it); the recorded texts once each, for the teacher's agreement
        with the cloud and for pooled features.
        """
        from edgekit.converters.training.teacher_cache import TeacherOutputs

        row = {text: i for i, text in enumerate(self.texts)}
        mine = np.array([text in row for text in texts], dtype=bool)
        if int(mine.sum()) < len(self.copies):
            raise ConversionError(f"the transfer set holds {int(mine.sum())} of the {len(self.copies)} recorded "
                                  "texts put into it (the way it is assembled changed)")
        rest = score([t for t, m in zip(texts, mine) if not m])
        recorded = score(list(self.texts))
        self.teacher_agreement = float((recorded.logits.argmax(-1) == self.cloud_ids).mean())
        index = [row[t] for t, m in zip(texts, mine) if m]
        logits = np.empty((len(texts), rest.logits.shape[1]), np.float32)
        logits[~mine], logits[mine] = rest.logits, np.log(self.targets[index]).astype(np.float32)
        pooled = None
        if rest.pooled is not None and recorded.pooled is not None:
            pooled = np.empty((len(texts), rest.pooled.shape[1]), np.float32)
            pooled[~mine], pooled[mine] = rest.pooled, recorded.pooled[index]
        return TeacherOutputs(logits, pooled, rest.cached and recorded.cached)

    def summary(self) -> dict[str, Any]:
        return {"directory": str(self.directory.resolve()), "weight": self.weight, "records": dict(self.counts),
                "unknown_labels": self.unknown_labels, "versions": self.versions,
                "transfer_texts": len(self.copies), "soft_targets": SOFT_TARGET_RULE,
                "teacher_agreement_with_cloud": self.teacher_agreement}


def build_feedback(answers: Sequence[CloudAnswer], labels: Sequence[str], *, directory: Path, weight: float = 1.0,
                   training: Sequence[str] = (), held_out: Sequence[str] = (), seed: int = 0,
                   echo: Callable[[str], None] = log.info) -> FeedbackSet:
    """Deduplicate, filter and weight the recorded answers (see the module docstring)."""
    ids = {label: i for i, label in enumerate(labels)}
    seen_train = {normalise(t) for t in training}
    seen_held = {normalise(t) for t in held_out}
    counts = Counter(read=len(answers))
    unknown: Counter[str] = Counter()
    groups: dict[str, list] = {}  # normalised text -> [text as recorded, sum of targets, records]
    for answer in answers:
        if answer.label not in ids:
            unknown[answer.label] += 1
            continue
        key = normalise(answer.text)
        if key in seen_train or key in seen_held:
            counts["in_training" if key in seen_train else "in_held_out"] += 1
            continue
        target = soft_target(ids[answer.label], answer.score, len(labels))
        if key in groups:
            groups[key][1] += target
            groups[key][2] += 1
        else:
            groups[key] = [answer.text, target, 1]
    counts["unknown_label"] = sum(unknown.values())
    counts["duplicates"] = sum(g[2] - 1 for g in groups.values())
    counts["used"] = len(groups)
    if unknown:
        shown = ", ".join(f"{label!r} ({n})" for label, n in unknown.most_common(5))
        echo(f"warning: skipped {counts['unknown_label']} of {len(answers)} records whose cloud label is not one of "
             f"the model's {len(labels)} labels: {shown}{', ...' if len(unknown) > 5 else ''}")
    if not groups:
        raise ConfigError(f"--feedback {directory}: none of the {len(answers)} records can be used "
                          f"({_counted(counts)})")
    texts = [g[0] for g in groups.values()]
    targets = np.stack([g[1] / g[2] for g in groups.values()])
    fb = FeedbackSet(Path(directory), weight, texts, targets, {k: int(counts[k]) for k in (
        "read", "unknown_label", "in_training", "in_held_out", "duplicates", "used")},
        dict(Counter(a.version for a in answers)), sorted(unknown))
    fb.copies = _weighted(texts, weight, seed)
    return fb


def _counted(counts: Counter) -> str:
    names = {"unknown_label": "label not in the model", "in_training": "training texts",
             "in_held_out": "validation or test texts", "duplicates": "duplicates"}
    return ", ".join(f"{counts[k]} {name}" for k, name in names.items() if counts[k]) or "nothing usable"


def _weighted(texts: list[str], weight: float, seed: int) -> list[str]:
    """Each text ``floor(weight)`` times, and a seeded share ``weight - floor(weight)`` of them once more."""
    whole, part = int(weight), weight - int(weight)
    extra = np.random.default_rng(seed).random(len(texts)) < part
    return [text for text, more in zip(texts, extra) for _ in range(whole + int(more))]


# ---------------------------------------------------------------------------------------------- comparison


@dataclass
class Answers:
    """One bundle's calibrated answers on a list of texts."""

    scores: np.ndarray
    pred: np.ndarray
    threshold: float


def check_baseline(bundle_dir: Path, labels: Sequence[str] | None = None):
    """The manifest of the bundle in service (``--feedback-baseline``); ConfigError if it is not a
    bundle, or (given ``labels``) if its labels are not the model's."""
    from edgekit.errors import ManifestError
    from edgekit.manifest import Manifest

    where = f"--feedback-baseline {bundle_dir}"
    if not Path(bundle_dir).is_dir():
        raise ConfigError(f"{where}: no such bundle directory")
    try:
        manifest = Manifest.load(bundle_dir)
    except ManifestError as exc:
        raise ConfigError(f"{where}: {exc.message}") from exc
    if labels is not None and sorted(manifest.labels) != sorted(labels):
        raise ConfigError(f"{where}: its labels are not the model's ({len(manifest.labels)} vs {len(labels)}; "
                          f"differing: {', '.join(sorted(set(manifest.labels) ^ set(labels))[:5])})")
    return manifest


def bundle_answers(bundle_dir: Path, texts: Sequence[str], labels: Sequence[str], *,
                   temperature: float | None = None, threshold: float | None = None) -> Answers:
    """Load a bundle through its runtime backend and answer ``texts``: label ids in ``labels``' order,
    scores at the manifest's temperature and threshold unless given."""
    from edgekit.converters.measure import batched_logits
    from edgekit.metrics import softmax
    from edgekit.runtime.model import load_bundle_model

    model = load_bundle_model(bundle_dir)
    try:
        info = model.info
        probs = softmax(batched_logits(model, list(texts), by_length=True),
                        info.temperature if temperature is None else temperature)
    finally:
        model.close()
    remap = np.array([list(labels).index(label) for label in info.labels])
    return Answers(probs.max(-1), remap[probs.argmax(-1)], float(info.threshold if threshold is None else threshold))


def _on_recorded(a: Answers, cloud: np.ndarray) -> dict[str, float]:
    to_cloud = a.scores < a.threshold
    return {"agreement_with_cloud": float((a.pred == cloud).mean()), "cloud_rate": float(to_cloud.mean()),
            "cascade_agreement": float((np.where(to_cloud, cloud, a.pred) == cloud).mean())}


def _on_test(a: Answers, teacher_pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from edgekit.metrics import cascade_at

    rate, cascade = cascade_at(a.threshold, a.scores, a.pred, teacher_pred, y)
    return {"accuracy": float((a.pred == y).mean()), "cloud_rate": rate, "cascade_accuracy": cascade}


def compare_bundles(fb: FeedbackSet, new: dict[str, tuple[Answers, Answers]], baseline: tuple[Answers, Answers] | None,
                    *, teacher_test_pred: np.ndarray, y_test: np.ndarray) -> list[dict[str, Any]]:
    """One row per bundle (the baseline first): figures on the recorded texts and on the test split.

    ``new`` and ``baseline``: (answers on ``fb.texts``, answers on the test split). The cloud on the
    recorded texts is what it answered; on test it is the teacher, as everywhere in the report.
    """
    cloud = fb.cloud_ids
    rows = []
    base_rec = base_test = None
    if baseline is not None:
        base_rec = _on_recorded(baseline[0], cloud)
        base_test = _on_test(baseline[1], teacher_test_pred, y_test)
        rows.append({"bundle": "baseline", "recorded": base_rec, "test": base_test})
    for name, (rec, test) in new.items():
        row = {"bundle": name, "recorded": _on_recorded(rec, cloud), "test": _on_test(test, teacher_test_pred, y_test)}
        if baseline is not None:
            row["recorded"]["cloud_rate_at_baseline_cascade"] = cloud_rate_for_accuracy(
                base_rec["cascade_agreement"], rec.scores, rec.pred, cloud, cloud)
            row["test"]["cloud_rate_at_baseline_cascade"] = cloud_rate_for_accuracy(
                base_test["cascade_accuracy"], test.scores, test.pred, teacher_test_pred, y_test)
        rows.append(row)
    return rows
