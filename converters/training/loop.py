"""The training loop shared by ``finetune`` and ``distill``, written on Hugging Face Accelerate.

On this machine it runs single-process on the CPU; under ``accelerate launch`` the same code
runs data-parallel on several GPUs (Accelerate shards the data loaders and syncs gradients).
The caller supplies the loss; this module owns batching, the optimiser, the schedule,
validation after each epoch, early stopping and the progress bar.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

__all__ = [
    "LengthBucketSampler",
    "TrainConfig",
    "TrainResult",
    "encode",
    "epochs_for",
    "predict_logits",
    "seed_everything",
    "token_lengths",
    "train",
    "warm_start_train_config",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None  # parameters named "classifier.*" (None: learning_rate)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    patience: int = 2  # trained epochs without validation improvement before stopping (see _Best)
    evaluate_start: bool = False  # score the model before training; keep it if no epoch beats it
    seed: int = 0
    progress: bool = True
    # "no" | "bf16": torch.autocast around the forward pass and the loss (not accelerate's
    # mixed_precision: its state is one per process, and `edgekit demo` trains twice in one)
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1 and learning_rate > 0")


def warm_start_train_config(options, *, epochs: int, mixed_precision: str) -> TrainConfig:
    """The TrainConfig of a model whose head starts warm (a probe): the start is scored as epoch 0,
    the head learns at 5x the encoder's rate unless told. ``options``: a FinetuneConfig or a
    DistillConfig (batch_size, learning_rate, head_learning_rate, patience, seed, progress)."""
    return TrainConfig(
        epochs=epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        head_learning_rate=options.head_learning_rate or 5 * options.learning_rate,
        patience=options.patience,
        evaluate_start=True,
        seed=options.seed,
        progress=options.progress,
        mixed_precision=mixed_precision,
    )


def bf16_is_fast() -> bool:
    """Does this machine multiply bf16 in hardware (AVX-512 BF16 or AMX on a CPU, or a CUDA GPU that
    supports it)? Only then is bf16 autocast worth it; elsewhere it emulates and is slower."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_mixed_precision(choice: str) -> str:
    """``auto`` → ``bf16`` where :func:`bf16_is_fast`, else ``no``; ``no``/``bf16`` as given."""
    if choice == "auto":
        return "bf16" if bf16_is_fast() else "no"
    return choice


def epochs_for(examples: int, batch_size: int, *, min_steps: int, min_epochs: int = 3, max_epochs: int = 30) -> int:
    """Epochs that give at least ``min_steps`` optimizer steps (a small data set needs more passes)."""
    steps_per_epoch = max(1, math.ceil(examples / batch_size))
    return max(min_epochs, min(max_epochs, math.ceil(min_steps / steps_per_epoch)))


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, sort by length within chunks of 50 batches, shuffle the batches.

    Random batches pad ~17-token texts to the longest in the batch (~50 tokens on banking77): a
    third of the compute is useful. Sorting within chunks keeps batches short while each epoch
    still sees every text exactly once, in a new order (the chunks are re-drawn every epoch).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, chunk_batches: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.chunk = batch_size * chunk_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.chunk):
            chunk = sorted(order[start : start + self.chunk], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    history: list[dict]


def seed_everything(seed: int) -> None:
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> list[int]:
    return [min(len(ids), max_length) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]


def encode(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def predict_logits(model, tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits of ``model`` for ``texts`` (eval mode, CPU or the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = encode(tokenizer, texts[start : start + batch_size], max_length)
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), np.float32)


def _loader(dataset: Sequence, collate: Callable, config: TrainConfig, lengths: Sequence[int] | None) -> DataLoader:
    if lengths is not None:
        sampler = LengthBucketSampler(lengths, config.batch_size, seed=config.seed)
        return DataLoader(list(dataset), batch_sampler=sampler, collate_fn=collate)
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(list(dataset), batch_size=config.batch_size, shuffle=True, collate_fn=collate,
                      generator=generator)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms; the head ("classifier.*") at its own rate."""
    head_lr = config.head_learning_rate or config.learning_rate
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = not ("bias" in name or "norm" in name.lower())
            head = name.split(".")[-2:-1] == ["classifier"]  # "classifier.weight", "student.classifier.bias"
            groups.setdefault((head, decay), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": head_lr if head else config.learning_rate,
          "weight_decay": config.weight_decay if decay else 0.0} for (head, decay), ps in groups.items()]
    )


class _Best:
    """The best validation score so far and the weights that made it (early stopping's memory).

    A warm start (epoch 0) competes for the final pick but not in early stopping: ``stale`` counts
    the trained epochs since the best *trained* one. Training from a probe head first loses accuracy
    while the learning rate is at its peak and recovers as it decays; measured against the start,
    patience ran out during that dip (banking77 from 1,804 texts: start 0.883, epochs 0.857, 0.869,
    0.879, stopped after 3 of 14 planned epochs, and the start was kept: distillation did nothing).
    """

    def __init__(self) -> None:
        self.score, self.epoch, self.state = -1.0, 0, None
        self.trained, self.stale = -1.0, 0  # the best trained epoch's score; trained epochs since it

    def offer(self, model: torch.nn.Module, epoch: int, score: float) -> None:
        if score > self.score:
            self.score, self.epoch = score, epoch
            self.state = copy.deepcopy(model.state_dict())
        if epoch == 0:
            return
        if score > self.trained:
            self.trained, self.stale = score, 0
        else:
            self.stale += 1


def train(
    model: torch.nn.Module,
    dataset: Sequence,
    collate: Callable[[list], dict],
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    evaluate: Callable[[torch.nn.Module], float],
    config: TrainConfig,
    *,
    lengths: Sequence[int] | None = None,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place and leave it holding the weights of the best validation epoch.

    ``loss_fn(model, batch)`` returns the scalar loss; ``evaluate(model)`` returns the validation
    score to maximise (e.g. accuracy). With ``lengths`` (token count per example) batches are
    drawn by :class:`LengthBucketSampler`; without, uniformly at random. Parameters whose name
    starts with ``classifier.`` (the head) learn at ``head_learning_rate``.
    """
    seed_everything(config.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    loader = _loader(dataset, collate, config, lengths)
    optimizer = _optimizer(model, config)
    steps = config.epochs * max(1, len(loader))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    best, history = _Best(), []
    show = config.progress and accelerator.is_local_main_process

    def validate(epoch: int, loss: float | None) -> float:
        unwrapped = accelerator.unwrap_model(model)
        score = evaluate(unwrapped) if accelerator.is_main_process else 0.0
        history.append({"epoch": epoch, "loss": loss, "validation": score})
        if show:
            _report_epoch(description, epoch, config.epochs, loss, score, score > best.score, started)
        best.offer(unwrapped, epoch, score)
        return score

    started = time.perf_counter()
    if config.evaluate_start:  # a warm start (probe head) is a candidate too: training must beat it
        validate(0, None)
    for epoch in range(1, config.epochs + 1):
        # disable=None: a bar on a terminal, none in a log file (the epoch line still prints)
        bar = tqdm(loader, desc=f"{description} epoch {epoch}/{config.epochs}", disable=None if show else True,
                   leave=False)
        validate(epoch, _one_epoch(model, bar, loss_fn, accelerator, optimizer, scheduler, config.mixed_precision))
        if best.stale >= config.patience:
            log.info("early stopping after epoch %d (best %d)", epoch, best.epoch)
            break
    unwrapped = accelerator.unwrap_model(model)
    if best.state is not None:
        unwrapped.load_state_dict(best.state)
    unwrapped.eval()
    return TrainResult(best.epoch, best.score, history)


def _one_epoch(model, bar, loss_fn, accelerator, optimizer, scheduler, mixed_precision: str = "no") -> float:
    model.train()
    total, count = 0.0, 0
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")
    for batch in bar:
        with autocast:
            loss = loss_fn(model, batch).float()
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        total += float(loss.detach())
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(1, count)


def _report_epoch(description: str, epoch: int, epochs: int, loss: float | None, score: float, improved: bool,
                  started: float) -> None:
    if epoch == 0:
        tqdm.write(f"{description} start: validation {score:.4f}")
        return
    per_epoch = (time.perf_counter() - started) / epoch
    tqdm.write(f"{description} epoch {epoch}/{epochs}: loss {loss:.4f}, validation {score:.4f}"
               f"{' (best)' if improved else ''}, {per_epoch:.0f} s/epoch, "
               f"at most {per_epoch * (epochs - epoch) / 60:.1f} min left")
