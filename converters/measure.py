"""Evaluate one loaded artifact: logits on a data set, and latency at batch 1."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

__all__ = ["batched_logits", "latency_ms"]


def batched_logits(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    return np.concatenate([model.logits(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)])


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
