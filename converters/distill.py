"""Knowledge distillation: the cloud model (teacher) → a small student classifier.

Student: the teacher's own architecture keeping every k-th layer (DistilBERT-style
initialisation from the teacher's weights), or a given smaller pretrained encoder
(``--student PATH``). Loss: KL on temperature-softened teacher logits + cross-entropy on the
labels + alignment of the final [CLS] hidden state through a learned projection (it works
across tokenizers: the first position is the classification token in both models).
Transfer set: the training texts, a lightly perturbed copy of each, and optional unlabelled
texts, all scored by the teacher once. Runs on :mod:`edgekit.converters.training`
(Hugging Face Accelerate).
"""

from __future__ import annotations

import copy
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.data import Dataset
from edgekit.errors import ModelError

__all__ = ["DistillConfig", "DistillResult", "augment", "distill", "student_from_teacher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    student: str | Path | None = None  # a pretrained encoder (directory or packaged name); None = the teacher's layers
    layers: int | None = None  # layers to keep: of the teacher (default: half) or of the given student (default: all)
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-4
    temperature: float = 2.0
    alpha: float = 0.7  # weight of the KL term; 1 - alpha weighs the label cross-entropy
    hidden_weight: float = 0.5
    augment: bool = True
    max_length: int = 64
    patience: int = 3
    seed: int = 0
    progress: bool = True


@dataclass
class DistillResult:
    model: torch.nn.Module
    tokenizer: object
    validation_accuracy: float
    best_epoch: int
    layers: list[int] | None  # teacher layers the student started from
    parameters: int


def student_from_teacher(teacher, layers: int | None):
    """A copy of the teacher with ``layers`` of its layers, evenly spaced from the first."""
    config = copy.deepcopy(teacher.config)
    total = config.num_hidden_layers
    keep_n = layers or max(1, total // 2)
    if not 1 <= keep_n <= total:
        raise ModelError(f"cannot keep {keep_n} layers of a {total}-layer teacher")
    step = total / keep_n
    keep = [int(i * step) for i in range(keep_n)]
    config.num_hidden_layers = keep_n
    student = type(teacher)(config)
    pattern = re.compile(r"\.layer\.(\d+)\.")
    state = {}
    for key, value in teacher.state_dict().items():
        match = pattern.search(key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in keep:
            state[pattern.sub(f".layer.{keep.index(int(match.group(1)))}.", key, count=1)] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ModelError(
            f"cannot build a student from this {config.model_type} teacher's layers "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); give --student PATH"
        )
    return student, keep


def _student_from_path(path: Path, labels: list[str]):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            attn_implementation="eager",
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load a student encoder from {path}: {exc}") from exc
    return model, tokenizer


_WORD = re.compile(r"\S+")


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
    """Student + projection, trained together (one module so Accelerate places and syncs both)."""

    def __init__(self, student, teacher_hidden: int) -> None:
        super().__init__()
        self.student = student
        self.projection = torch.nn.Linear(student.config.hidden_size, teacher_hidden)


@torch.no_grad()
def _teacher_targets(teacher, tokenizer, texts, max_length, batch_size=64):
    from edgekit.converters.training import encode

    teacher.eval()
    logits, hidden = [], []
    for start in range(0, len(texts), batch_size):
        out = teacher(**encode(tokenizer, texts[start : start + batch_size], max_length), output_hidden_states=True)
        logits.append(out.logits.float())
        hidden.append(out.hidden_states[-1][:, 0].float())
    return torch.cat(logits), torch.cat(hidden)


def distill(
    teacher,
    teacher_tokenizer,
    labels: list[str],
    train: Dataset,
    validation: Dataset,
    config: DistillConfig,
    unlabeled: Dataset | None = None,
) -> DistillResult:
    from edgekit.converters.training import TrainConfig, encode, predict_logits, seed_everything
    from edgekit.converters.training import train as run_training

    seed_everything(config.seed)
    if config.student is None:
        student, kept = student_from_teacher(teacher, config.layers)
        tokenizer = teacher_tokenizer
    else:
        from edgekit.converters.pretrained import resolve_base

        student, tokenizer = _student_from_path(resolve_base(str(config.student)), labels)
        kept = None
        if config.layers is not None:
            student, kept = student_from_teacher(student, config.layers)
    label2id = {label: i for i, label in enumerate(labels)}

    rng = random.Random(config.seed)
    texts = list(train.texts)
    targets = [label2id[y] for y in train.labels]
    if config.augment:
        extra = [augment(t, rng) for t in train.texts]
        texts += extra
        targets += [-100] * len(extra)  # perturbed copies learn from the teacher only
    if unlabeled is not None:
        texts += list(unlabeled.texts)
        targets += [-100] * len(unlabeled)
    log.info("transfer set: %d texts (%d labelled)", len(texts), len(train))
    t_logits, t_hidden = _teacher_targets(teacher, teacher_tokenizer, texts, config.max_length)
    module = _DistillModule(student, t_hidden.shape[1])
    T = config.temperature

    def collate(items):
        idx = [i for i, _ in items]
        batch = encode(tokenizer, [texts[i] for i in idx], config.max_length)
        batch["labels"] = torch.tensor([targets[i] for i in idx])
        batch["t_logits"] = t_logits[idx]
        batch["t_hidden"] = t_hidden[idx]
        return batch

    def loss_fn(m, batch):
        out = m.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        s = out.logits
        loss = config.alpha * T * T * F.kl_div(
            F.log_softmax(s / T, -1), F.softmax(batch["t_logits"] / T, -1), reduction="batchmean"
        )
        labelled = batch["labels"] != -100
        if labelled.any():
            loss = loss + (1 - config.alpha) * F.cross_entropy(s[labelled], batch["labels"][labelled])
        if config.hidden_weight:
            projected = m.projection(out.hidden_states[-1][:, 0])
            loss = loss + config.hidden_weight * (1 - F.cosine_similarity(projected, batch["t_hidden"], -1).mean())
        return loss

    y_val = np.array([label2id[y] for y in validation.labels])

    def evaluate(m) -> float:
        logits = predict_logits(m.student, tokenizer, validation.texts, max_length=config.max_length)
        return float((logits.argmax(-1) == y_val).mean())

    result = run_training(
        module,
        [(i, None) for i in range(len(texts))],
        collate,
        loss_fn,
        evaluate,
        TrainConfig(
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            patience=config.patience,
            seed=config.seed,
            progress=config.progress,
        ),
        description="distill",
    )
    student = module.student.eval()
    return DistillResult(
        model=student,
        tokenizer=tokenizer,
        validation_accuracy=result.best_score,
        best_epoch=result.best_epoch,
        layers=kept,
        parameters=sum(p.numel() for p in student.parameters()),
    )
