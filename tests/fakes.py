"""Fakes for the runtime's tests: keyword-scoring LogitModels in numpy, a scriptable cloud
client, a manual clock, and a helper that runs a real gRPC server on 127.0.0.1.

The edge fake knows one keyword per intent; the cloud fake knows more, so on texts like
``"I changed my mind"`` the edge is unsure (uniform logits, argmax = the first label) and
wrong, while the cloud is sure and right: who answered is visible in the label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgekit.errors import CloudUnavailable
from edgekit.runtime.types import ModelInfo

LABELS = ("track_order", "cancel_order", "get_refund")

EDGE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "track_order": ("track", "where"),
    "cancel_order": ("cancel",),
    "get_refund": ("refund",),
}
CLOUD_KEYWORDS: dict[str, tuple[str, ...]] = {
    "track_order": ("track", "where", "parcel"),
    "cancel_order": ("cancel", "changed my mind"),
    "get_refund": ("refund", "money back"),
}

CONFIDENT = ["please cancel my order", "where is my order", "I want a refund"]  # edge right and sure
UNSURE = {"I changed my mind about it": "cancel_order", "can I have my money back": "get_refund"}  # edge wrong


class KeywordModel:
    """A LogitModel: a label's logit is ``strength`` times the number of its keywords in the text.

    ``fail_on``: texts containing it raise RuntimeError (a model bug). ``hold_on``: texts
    containing it set ``entered`` and block until ``release`` is set (a slow model).
    """

    def __init__(
        self,
        keywords: Mapping[str, Sequence[str]] = EDGE_KEYWORDS,
        *,
        name: str = "fake-edge",
        version: str = "3",
        backend: str = "fake",
        temperature: float = 1.0,
        threshold: float = 0.6,
        strength: float = 4.0,
        fail_on: str | None = None,
        hold_on: str | None = None,
    ) -> None:
        self.keywords = {label: tuple(words) for label, words in keywords.items()}
        self.info = ModelInfo(
            name=name,
            version=version,
            format="fake",
            precision="fp32",
            backend=backend,
            labels=tuple(keywords),
            max_length=32,
            temperature=temperature,
            threshold=threshold,
            summary={"fake": True, "labels": len(keywords)},
        )
        self.strength = strength
        self.fail_on = fail_on
        self.hold_on = hold_on
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []
        self.seen: list[str] = []  # every text the model ran on, in order
        self.closed = False

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        self.batch_sizes.append(len(texts))
        self.seen.extend(texts)
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError("model exploded")
        if self.hold_on is not None and any(self.hold_on in t for t in texts):
            self.entered.set()
            self.release.wait(10)
        rows = [[sum(w in t.lower() for w in words) for words in self.keywords.values()] for t in texts]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(self.keywords)) * self.strength

    def predict(self, text: str) -> tuple[str, float]:
        """The fake's own (label, calibrated score): what a server serving it must answer."""
        logits = self.logits([text])[0] / self.info.temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return self.info.labels[int(probs.argmax())], float(probs.max())

    def close(self) -> None:
        self.closed = True


def cloud_model(**kwargs: Any) -> KeywordModel:
    return KeywordModel(CLOUD_KEYWORDS, name="fake-cloud", version="7", **kwargs)


class FakeCloud:
    """A CloudClient: answers with ``answer(text)``, or raises ``error``, or blocks like a slow
    server until ``release`` is set or the timeout passes (then CloudUnavailable, as gRPC would)."""

    def __init__(
        self,
        answer: Callable[[str], tuple[str, float]] = lambda text: ("get_refund", 0.99),
        *,
        error: Exception | None = None,
        block: bool = False,
    ) -> None:
        self.answer = answer
        self.error = error
        self.block = block
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[list[str], float]] = []
        self.closed = False

    def classify(self, texts: Sequence[str], timeout_s: float) -> list[tuple[str, float]]:
        self.calls.append((list(texts), timeout_s))
        self.entered.set()
        if self.block and not self.release.wait(timeout_s):
            raise CloudUnavailable("DEADLINE_EXCEEDED")
        if self.error is not None:
            raise self.error
        return [self.answer(t) for t in texts]

    def close(self) -> None:
        self.closed = True


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def serving(model: Any, **kwargs: Any) -> Iterator[Any]:
    """A real EdgeServer on 127.0.0.1 with an OS-chosen port, stopped on exit."""
    from edgekit.runtime.server import build_server

    server = build_server(model, host="127.0.0.1", port=0, **kwargs)
    try:
        yield server
    finally:
        server.stop(grace_s=1.0)
