"""Knowledge distillation: the cloud model (teacher) → a small student classifier.

The student starts as close to a classifier as it can (issue 10: a distilled student had ended
16 points below the frozen encoder it started from):

1. **Start.** Candidate encoders — a pre-trained small encoder (paraphrase-MiniLM-L3-v2), every
   other layer of all-MiniLM-L6-v2, the teacher's own layers when the teacher is small — each
   read with the pooling it was trained with (masked mean for sentence-transformers), are probed
   frozen: a logistic-regression head fitted on the training texts, scored on validation. The
   best start wins (``student="auto"``), and its probe becomes the student's first head.
2. **Vocabulary** pruned to the domain corpus *before* training, so the optimizer never steps
   30k unused embedding rows.
3. **Schedule.** Enough optimizer steps for the data size (a small data set gets more epochs),
   6% warm-up and linear decay, the head at a higher learning rate, length-bucketed batches,
   early stopping on validation with the best epoch restored.
4. **Loss.** ``alpha`` · KL(student ‖ teacher at temperature T) · T² + (1 − alpha) · cross-entropy
   on the labels (labelled texts only). The teacher's logits are first divided by the temperature
   that calibrates them on validation, so an under-confident teacher does not hand the student
   nearly flat targets. Optional pooled hidden-state alignment through a learned projection
   (``hidden_weight``, off by default).

Transfer set: the training texts (labelled), perturbed copies of them and ``--unlabeled`` texts
(both KD-only). Teacher outputs come from :mod:`edgekit.converters.training.teacher_cache`. Runs on
:mod:`edgekit.converters.training.loop` (Hugging Face Accelerate).
"""

from __future__ import annotations

import copy
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.errors import ModelError

__all__ = [
    "AUTO",
    "Candidate",
    "DistillConfig",
    "DistillResult",
    "StudentStart",
    "augment",
    "choose_start",
    "distill",
    "slice_encoder",
    "student_candidates",
]

log = logging.getLogger(__name__)
AUTO = "auto"
TEACHER_LAYERS = "teacher-layers"
# Largest hidden size for which the teacher's own layers are a student candidate: above it the
# student would not be small (a 3-layer slice of a 768-wide teacher is 4x a MiniLM's size).
_SMALL_HIDDEN = 384


@dataclass(frozen=True)
class DistillConfig:
    student: str | Path | None = AUTO  # auto | packaged name | directory | None (= the teacher's layers)
    layers: int | None = None  # layers to keep: of the teacher / of the given student (None: 3 for auto)
    epochs: int | None = None  # None: enough for min_steps optimizer steps, within [3, max_epochs]
    min_steps: int = 1500
    max_epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None  # None: 5 x learning_rate
    temperature: float = 1.0
    alpha: float = 0.5  # weight of the KL term; 1 - alpha weighs the label cross-entropy
    calibrate_teacher: bool = True  # soften/sharpen the teacher's logits by its validation temperature first
    hidden_weight: float = 0.0
    augment: bool = True
    max_length: int = 64
    patience: int = 3
    seed: int = 0
    progress: bool = True
    mixed_precision: str = "no"  # "no" | "bf16" (training.resolve_mixed_precision resolves "auto")


@dataclass
class Candidate:
    name: str  # e.g. "paraphrase-minilm-l3", "minilm-l6[0,2,4]", "teacher-layers[0,2,4]"
    model: object  # PooledClassifier (head: the probe, once fitted)
    tokenizer: object
    layers: list[int] | None
    parameters: int
    probe_accuracy: float = float("nan")


@dataclass
class StudentStart:
    chosen: Candidate
    probed: list[dict] = field(default_factory=list)  # per candidate: name, layers, parameters, probe accuracy
    reason: str = ""


@dataclass
class DistillResult:
    model: torch.nn.Module
    tokenizer: object
    validation_accuracy: float
    best_epoch: int
    epochs_planned: int
    teacher_temperature: float
    history: list[dict]


def slice_encoder(encoder, layers: int | None):
    """A copy of ``encoder`` with ``layers`` of its layers, evenly spaced from the first (default: half)."""
    config = copy.deepcopy(encoder.config)
    total = config.num_hidden_layers
    keep_n = layers or max(1, total // 2)
    if not 1 <= keep_n <= total:
        raise ModelError(f"cannot keep {keep_n} layers of a {total}-layer encoder")
    step = total / keep_n
    keep = [int(i * step) for i in range(keep_n)]
    config.num_hidden_layers = keep_n
    sliced = type(encoder)(config)
    pattern = re.compile(r"(^|\.)layer\.(\d+)\.")
    state = {}
    for key, value in encoder.state_dict().items():
        match = pattern.search(key)
        if match is None:
            state[key] = value
        elif int(match.group(2)) in keep:
            state[pattern.sub(f"{match.group(1)}layer.{keep.index(int(match.group(2)))}.", key, count=1)] = value
    missing, unexpected = sliced.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ModelError(
            f"cannot slice this {config.model_type} encoder's layers "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); give --student PATH"
        )
    return sliced, keep


def _teacher_encoder(teacher):
    from edgekit.converters.classifier import PooledClassifier

    if isinstance(teacher, PooledClassifier):
        return teacher.encoder, teacher.pooling
    return getattr(teacher, teacher.base_model_prefix), "cls"


def _candidate(name: str, encoder, tokenizer, labels, pooling: str, layers: int | None, sliced: bool) -> Candidate:
    from edgekit.converters.classifier import PooledClassifier

    kept = None
    if sliced:
        encoder, kept = slice_encoder(encoder, layers)
        name = f"{name}[{','.join(map(str, kept))}]"
    model = PooledClassifier(encoder, labels, pooling)
    return Candidate(name, model, tokenizer, kept, sum(p.numel() for p in model.parameters()))


def student_candidates(config: DistillConfig, teacher, teacher_tokenizer, labels: list[str]) -> list[Candidate]:
    """The starts ``config.student`` asks for: one, or the auto set."""
    from edgekit.converters.classifier import base_pooling, load_encoder
    from edgekit.converters.training.pretrained import resolve_base
    from transformers import AutoTokenizer

    def packaged(name: str, layers: int | None, sliced: bool) -> Candidate:
        path = resolve_base(name)
        encoder = load_encoder(path, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        return _candidate(name if isinstance(name, str) else Path(name).name, encoder, tokenizer, labels,
                          base_pooling(path), layers, sliced)

    def from_teacher(layers: int | None) -> Candidate:
        encoder, pooling = _teacher_encoder(teacher)
        return _candidate(TEACHER_LAYERS, encoder, teacher_tokenizer, labels, pooling, layers, True)

    if config.student is None:
        return [from_teacher(config.layers)]
    if str(config.student) != AUTO:
        return [packaged(str(config.student), config.layers, config.layers is not None)]
    if config.layers is None:
        # the two packaged encoders whole (3 and 6 layers): choose_start weighs accuracy against size
        candidates = [packaged("paraphrase-minilm-l3", None, False), packaged("minilm-l6", None, False)]
        layers = 3
    else:
        layers = config.layers
        # every start that has at least `layers` layers (a 3-layer encoder cannot give 4)
        candidates = [packaged("paraphrase-minilm-l3", layers, layers != 3)] if layers <= 3 else []
        if layers <= 6:
            candidates.append(packaged("minilm-l6", layers, layers != 6))
    encoder, _ = _teacher_encoder(teacher)
    if encoder.config.hidden_size <= _SMALL_HIDDEN and encoder.config.num_hidden_layers > layers:
        candidates.append(from_teacher(layers))
    if not candidates:
        raise ModelError(f"no packaged student start has {layers} layers (paraphrase-minilm-l3: 3, minilm-l6: 6); "
                         "give --student PATH or fewer --student-layers")
    return candidates


# A bigger start must earn its cost: it is chosen only if its frozen probe beats every smaller
# start's by more than this (accuracy, 1 point). On banking77 MiniLM-L6 (6 layers) probes 1.3 points
# above paraphrase-MiniLM-L3 and ends 1.5 points above it after distillation (benchmarks/RESULTS.md);
# on easy data both probe alike and the 3-layer start, twice as fast, is kept.
SIZE_MARGIN = 0.01


def choose_start(candidates: list[Candidate], train_texts, y_train, val_texts, y_val, *, max_length: int,
                 echo: Callable[[str], None] = log.info) -> StudentStart:
    """Probe every candidate frozen (linear head on train, accuracy on validation); keep the
    smallest whose probe is within :data:`SIZE_MARGIN` of the best probe."""
    from edgekit.converters.training.probe import fit_probe, pooled_features

    probed = []
    best = None
    for c in candidates:
        x_train = pooled_features(c.model, c.tokenizer, train_texts, max_length=max_length)
        probe = fit_probe(x_train, np.asarray(y_train), c.model.config.num_labels, scale=0.5)
        x_val = pooled_features(c.model, c.tokenizer, val_texts, max_length=max_length)
        c.probe_accuracy = probe.accuracy(x_val, np.asarray(y_val))
        c.model.classifier = probe.to_linear()
        probed.append({"name": c.name, "layers": c.layers, "parameters": c.parameters,
                       "pooling": c.model.pooling, "probe_validation_accuracy": c.probe_accuracy})
        echo(f"  start {c.name}: {c.parameters / 1e6:.1f}M parameters, {c.model.pooling} pooling, "
             f"frozen linear probe {c.probe_accuracy:.4f} on validation")
    best, reason = pick_start(candidates)
    for c in candidates:  # free the others' weights
        if c is not best:
            c.model = None
    return StudentStart(best, probed, reason)


def pick_start(candidates: list[Candidate]) -> tuple[Candidate, str]:
    """The smallest probed candidate within :data:`SIZE_MARGIN` of the best probe, and why."""
    top = max(c.probe_accuracy for c in candidates)
    best = min((c for c in candidates if c.probe_accuracy >= top - SIZE_MARGIN - 1e-9),
               key=lambda c: (c.parameters, -c.probe_accuracy))
    if len(candidates) == 1:
        return best, "the only start asked for"
    if best.probe_accuracy >= top - 1e-9:
        smaller = [c for c in candidates if c.parameters < best.parameters]
        return best, (f"highest frozen-probe validation accuracy ({best.probe_accuracy:.4f}) of {len(candidates)} "
                      "starts probed" + (f"; the smaller starts probed more than {SIZE_MARGIN * 100:.0f} point lower"
                                         if smaller else ""))
    return best, (f"the smallest start whose frozen probe ({best.probe_accuracy:.4f}) is within "
                  f"{SIZE_MARGIN * 100:.0f} point of the best ({top:.4f}) of {len(candidates)} starts probed")


def augment(text: str, rng: random.Random) -> str:
    """One light perturbation a shopper might make: drop or swap a word, a typo, case/punctuation."""
    words = text.split()
    choice = rng.randrange(4)
    if choice == 0 and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif choice == 1 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif choice == 2:
        long_words = [i for i, w in enumerate(words) if len(w) > 3]
        if long_words:
            i = rng.choice(long_words)
            w = words[i]
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    else:
        return re.sub(r"[^\w\s]", "", text).lower() or text
    return " ".join(words) or text


class _DistillModule(torch.nn.Module):
    """Student + projection for hidden alignment (one module so Accelerate places and syncs both)."""

    def __init__(self, student, teacher_hidden: int | None) -> None:
        super().__init__()
        self.student = student
        self.projection = (torch.nn.Linear(student.config.hidden_size, teacher_hidden)
                           if teacher_hidden else None)


@dataclass
class TransferSet:
    texts: list[str]
    targets: list[int]  # label id, or -100 for KD-only texts
    teacher_logits: np.ndarray
    teacher_pooled: np.ndarray | None = None


def transfer_texts(train_texts, train_y, *, augment_copies: bool, unlabeled=(), seed: int = 0):
    """(texts, targets): the labelled training texts, then KD-only perturbed copies and unlabelled texts."""
    rng = random.Random(seed)
    texts, targets = list(train_texts), list(train_y)
    if augment_copies:
        extra = [augment(t, rng) for t in train_texts]
        texts += extra
        targets += [-100] * len(extra)
    texts += list(unlabeled)
    targets += [-100] * len(unlabeled)
    return texts, targets


def _kd_loss(alpha: float, T: float, hidden: float):
    """alpha * KL(student || teacher at T) * T^2 + (1 - alpha) * CE on labelled texts [+ pooled alignment]."""

    def loss_fn(m, batch):
        pooled, _ = m.student.pool(batch["input_ids"], batch["attention_mask"])
        s = m.student.classifier(m.student.dropout(pooled))
        loss = alpha * T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(batch["t_logits"] / T, -1),
                                        reduction="batchmean")
        labelled = batch["labels"] != -100
        if labelled.any():
            loss = loss + (1 - alpha) * F.cross_entropy(s[labelled], batch["labels"][labelled])
        if hidden:
            projected = m.projection(pooled)
            loss = loss + hidden * (1 - F.cosine_similarity(projected, batch["t_pooled"], -1).mean())
        return loss

    return loss_fn


def distill(student, tokenizer, transfer: TransferSet, val_texts, y_val, config: DistillConfig,
            teacher_temperature: float = 1.0) -> DistillResult:
    """Train ``student`` (a PooledClassifier, head already warm) on ``transfer``; best epoch restored."""
    from edgekit.converters.training.loop import epochs_for, seed_everything, token_lengths, warm_start_train_config
    from edgekit.converters.training.loop import train as run_training

    seed_everything(config.seed)
    t_logits = torch.from_numpy(transfer.teacher_logits / teacher_temperature)
    t_pooled = torch.from_numpy(transfer.teacher_pooled) if transfer.teacher_pooled is not None else None
    hidden = config.hidden_weight if t_pooled is not None else 0.0
    module = _DistillModule(student, t_pooled.shape[1] if hidden else None)
    epochs = config.epochs or epochs_for(len(transfer.texts), config.batch_size, min_steps=config.min_steps,
                                         max_epochs=config.max_epochs)
    result = run_training(
        module,
        list(range(len(transfer.texts))),
        _collate(tokenizer, transfer, t_logits, t_pooled if hidden else None, config.max_length),
        _kd_loss(config.alpha, config.temperature, hidden),
        _validation_accuracy(tokenizer, val_texts, y_val, config.max_length),
        warm_start_train_config(config, epochs=epochs, mixed_precision=config.mixed_precision),
        lengths=token_lengths(tokenizer, transfer.texts, config.max_length),
        description="distill",
    )
    student = module.student.eval()
    return DistillResult(student, tokenizer, result.best_score, result.best_epoch, epochs, teacher_temperature,
                         result.history)


def _collate(tokenizer, transfer: TransferSet, t_logits: torch.Tensor, t_pooled: torch.Tensor | None,
             max_length: int) -> Callable[[list[int]], dict]:
    """Indices of the transfer set → a batch: tokens, labels (-100: KD only), the teacher's outputs."""
    from edgekit.converters.training.loop import encode

    texts, targets = transfer.texts, transfer.targets

    def collate(idx: list[int]) -> dict:
        batch = encode(tokenizer, [texts[i] for i in idx], max_length)
        batch["labels"] = torch.tensor([targets[i] for i in idx])
        batch["t_logits"] = t_logits[idx]
        if t_pooled is not None:
            batch["t_pooled"] = t_pooled[idx]
        return batch

    return collate


def _validation_accuracy(tokenizer, val_texts, y_val, max_length: int) -> Callable[[_DistillModule], float]:
    from edgekit.converters.training.loop import predict_logits

    y_val = np.asarray(y_val)

    def evaluate(m: _DistillModule) -> float:
        logits = predict_logits(m.student, tokenizer, val_texts, max_length=max_length)
        return float((logits.argmax(-1) == y_val).mean())

    return evaluate
