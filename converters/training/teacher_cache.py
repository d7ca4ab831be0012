"""The teacher's outputs, computed once per (teacher weights, texts, max length) and kept on disk.

Scoring the transfer set with a BERT-base teacher is the slowest CPU step of ``convert`` after
distillation itself; a rerun with other export, gate or distillation options must not pay it
again. Entries live under ``<edgekit cache>/teacher-outputs/<key>.npz``; the key hashes the
teacher's weight files, every text in order, the max length and what is stored, so a changed
teacher or data set never reads a stale entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.cache import cache_dir

__all__ = ["TeacherOutputs", "teacher_cache_key", "teacher_outputs"]

log = logging.getLogger(__name__)


@dataclass
class TeacherOutputs:
    logits: np.ndarray  # [texts, labels] float32
    pooled: np.ndarray | None  # [texts, hidden] float32, when asked for
    cached: bool  # read from disk (True) or computed now (False)


def teacher_cache_key(weights_sha256: dict[str, str], texts: Sequence[str], max_length: int, *, pooled: bool) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights_sha256):
        digest.update(f"{name}={weights_sha256[name]}\n".encode())
    digest.update(f"max_length={max_length};pooled={pooled};n={len(texts)}\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def _score(teacher, tokenizer, texts: Sequence[str], max_length: int, pooled: bool, batch_size: int = 64):
    import torch
    from edgekit.converters.training.loop import encode

    teacher.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    logits = np.zeros((len(texts), teacher.config.num_labels), np.float32)
    features = np.zeros((len(texts), teacher.config.hidden_size), np.float32) if pooled else None
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = encode(tokenizer, [texts[i] for i in idx], max_length)
            if pooled and hasattr(teacher, "pool"):  # an edgekit classifier: its own pooled vector
                vec, _ = teacher.pool(batch["input_ids"], batch["attention_mask"])
                logits[idx] = teacher.classifier(vec).float().numpy()
                features[idx] = vec.float().numpy()
            elif pooled:  # a Hugging Face classifier reads [CLS]
                out = teacher(**batch, output_hidden_states=True)
                logits[idx] = out.logits.float().numpy()
                features[idx] = out.hidden_states[-1][:, 0].float().numpy()
            else:
                logits[idx] = teacher(**batch).logits.float().numpy()
    return logits, features


def teacher_outputs(teacher, tokenizer, texts: Sequence[str], *, max_length: int, weights_sha256: dict[str, str],
                    pooled: bool = False, use_cache: bool = True) -> TeacherOutputs:
    """The teacher's logits (and pooled features) for ``texts``, from the cache when present."""
    key = teacher_cache_key(weights_sha256, texts, max_length, pooled=pooled)
    path = cache_dir() / "teacher-outputs" / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as data:
                if data["logits"].shape[0] == len(texts):
                    return TeacherOutputs(data["logits"], data["pooled"] if pooled else None, True)
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry is recomputed, not trusted
            log.warning("ignoring the unreadable teacher cache entry %s (%s)", path, exc)
    logits, features = _score(teacher, tokenizer, texts, max_length, pooled)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, logits=logits, pooled=features if pooled else np.zeros((0,), np.float32))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return TeacherOutputs(logits, features, False)
