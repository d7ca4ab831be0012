"""Evaluate one loaded artifact: logits on a data set, and latency at batch 1."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

__all__ = ["batched_logits", "latency_ms"]


def batched_logits(model, texts: Sequence[str], batch_size: int = 64, *, by_length: bool = False) -> np.ndarray:
    """Logits of ``texts`` in batches, in their order. ``by_length`` batches texts of similar length
    together (a batch pads to its longest text: on banking77 random batches of 64 are two thirds
    padding). A dynamically quantized int8 graph runs one text per call whatever the batch (the
    runtime's ``Backend.rows_interact``): its logits, and so the gate's figures, are the served ones."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if by_length else list(range(len(texts)))
    if not order:
        return np.zeros((0, 0), np.float32)
    out = np.concatenate([model.logits([texts[i] for i in order[s : s + batch_size]])
                          for s in range(0, len(order), batch_size)])
    logits = np.empty_like(out)
    logits[order] = out
    return logits


def latency_ms(model, texts: Sequence[str], warmup: int = 3) -> dict[str, float]:
    """Per-text latency (tokenize + infer) at batch 1: p50 and p90 in milliseconds."""
    for text in texts[:warmup]:
        model.logits([text])
    times = []
    for text in texts:
        start = time.perf_counter()
        model.logits([text])
        times.append((time.perf_counter() - start) * 1000)
    return {"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p90": float(np.percentile(times, 90))}
