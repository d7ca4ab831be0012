"""Wall time per stage of a long command (``edgekit convert``): recorded in report.json, printed at the end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

__all__ = ["StageTimer"]


class StageTimer:
    """``with timer.stage("distillation"): ...`` adds the stage's seconds; a repeated name accumulates.

    The stage may carry a note (``note("cached")``), shown beside its time: a rerun of convert
    shows that teacher scoring was read from the cache, not recomputed.
    """

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, list[str]] = {}
        self._echo = echo
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Callable[[str], None]]:
        notes = self.notes.setdefault(name, [])
        start = time.perf_counter()
        try:
            yield notes.append
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self._started, 2)

    def summary(self) -> str:
        parts = []
        for name, seconds in self.seconds.items():
            notes = sorted(set(self.notes.get(name, [])))
            parts.append(f"{name} {seconds:.1f} s" + (f" ({', '.join(notes)})" if notes else ""))
        return f"time per stage (total {self.total:.0f} s): " + "; ".join(parts)
