"""The training loop shared by ``finetune`` and ``distill``, written on Hugging Face Accelerate.

On this machine it runs single-process on the CPU; under ``accelerate launch`` the same code
runs data-parallel on several GPUs (Accelerate shards the data loaders and syncs gradients).
The caller supplies the loss; this module owns batching, the optimiser, the schedule,
validation after each epoch, early stopping and the progress bar.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

__all__ = ["TrainConfig", "TrainResult", "encode", "predict_logits", "seed_everything", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    patience: int = 2  # epochs without validation improvement before stopping
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1 and learning_rate > 0")


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    history: list[dict]


def seed_everything(seed: int) -> None:
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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


def train(
    model: torch.nn.Module,
    dataset: Sequence,
    collate: Callable[[list], dict],
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    evaluate: Callable[[torch.nn.Module], float],
    config: TrainConfig,
    *,
    extra_parameters: Sequence[torch.nn.Parameter] = (),
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place and leave it holding the weights of the best validation epoch.

    ``loss_fn(model, batch)`` returns the scalar loss; ``evaluate(model)`` returns the validation
    score to maximise (e.g. accuracy). ``extra_parameters`` (e.g. a projection for hidden-state
    alignment) are optimised too.
    """
    seed_everything(config.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(list(dataset), batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    no_decay = {id(p) for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n or "norm" in n.lower()}
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": config.weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    steps = config.epochs * max(1, len(loader))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    best_score, best_epoch, best_state, stale = -1.0, 0, None, 0
    history: list[dict] = []
    show = config.progress and accelerator.is_local_main_process
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, count = 0.0, 0
        # disable=None: a bar on a terminal, none in a log file (the epoch line below still prints)
        bar = tqdm(loader, desc=f"{description} epoch {epoch}/{config.epochs}", disable=None if show else True, leave=False)
        for batch in bar:
            loss = loss_fn(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += float(loss.detach())
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        unwrapped = accelerator.unwrap_model(model)
        score = evaluate(unwrapped) if accelerator.is_main_process else 0.0
        history.append({"epoch": epoch, "loss": total / max(1, count), "validation": score})
        if show:
            tqdm.write(f"{description} epoch {epoch}: loss {total / max(1, count):.4f}, validation {score:.4f}")
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(unwrapped.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                log.info("early stopping after epoch %d (best %d)", epoch, best_epoch)
                break
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    unwrapped.eval()
    return TrainResult(best_epoch, best_score, history)
