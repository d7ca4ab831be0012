"""CPU affinity for ``edgekit serve --engine-cpus``: the engine on cores of its own, the rest elsewhere.

Under load on a small device the model shares the cores with gRPC's threads, the request handlers
and often the clients; the scheduler moves the engine thread between cores and lets others run on
its core, and every move or interruption costs the engine its caches. Pinning the micro-batcher's
engine thread to some cores and the server's other threads to the others is what inference servers
offer for this (OpenVINO's CPU pinning, Triton's host policies). Measured in
benchmarks/RESULTS.md (issue 12, session 11: ``server_overhead.py --engine-cpus 1``).

Linux only (``os.sched_setaffinity``; on Linux it applies to the calling thread, and threads
inherit their creator's affinity). Hand-written: psutil sets a process's affinity, not a thread's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from edgekit.errors import ConfigError

__all__ = ["RESERVED_CPUS_ENV", "format_cpus", "parse_cpu_list", "pin_thread", "pinned", "split_cpus",
           "worker_cpus"]

# Set by `serve --workers N --engine-cpus LIST` in its workers' environment: every worker's engine
# CPUs, which the other threads of each worker leave alone (not only its own engine's)
RESERVED_CPUS_ENV = "EDGEKIT_ENGINE_CPUS_RESERVED"


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"1"``, ``"2,3"``, ``"0-3"`` or ``"0,2-3"`` (as taskset and cpusets write them) as CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                if first > last:
                    raise ValueError
                cpus.update(range(first, last + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            raise ConfigError(f"--engine-cpus: {text!r} is not a CPU list (such as 1, 2,3 or 2-3)") from None
    if any(cpu < 0 for cpu in cpus):
        raise ConfigError(f"--engine-cpus: {text!r} names a negative CPU")
    return frozenset(cpus)


def split_cpus(engine: frozenset[int], reserved: frozenset[int] | None = None) -> tuple[frozenset[int], frozenset[int]]:
    """The engine's CPUs and the rest of the CPUs this process may use, less ``reserved`` too (the
    engines of the other ``--workers``); ConfigError unless the engine's are among them and leave at
    least one for the rest."""
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--engine-cpus needs Linux (os.sched_setaffinity); it is not implemented here")
    allowed = frozenset(os.sched_getaffinity(0))
    missing = sorted(engine - allowed)
    if missing:
        raise ConfigError(f"--engine-cpus: CPU {', '.join(map(str, missing))} is not available to this process "
                          f"(it may use {format_cpus(allowed)})")
    taken = engine | (reserved or frozenset())
    rest = allowed - taken
    if not rest:
        raise ConfigError(f"--engine-cpus {format_cpus(taken)} leaves no CPU for the server's other threads "
                          f"(it may use {format_cpus(allowed)})")
    return engine, rest


def worker_cpus(engine: frozenset[int], workers: int) -> list[frozenset[int]]:
    """``engine`` split into ``workers`` groups of consecutive CPUs, one per ``serve --workers``
    process (sizes differ by at most one); ConfigError if there are fewer CPUs than workers."""
    if len(engine) < workers:
        raise ConfigError(f"--engine-cpus names {len(engine)} CPU(s) for {workers} workers: each worker's engine "
                          "needs one of its own (name more CPUs, or run fewer workers)")
    cpus = sorted(engine)
    size, extra = divmod(len(cpus), workers)
    groups, start = [], 0
    for i in range(workers):
        end = start + size + (i < extra)
        groups.append(frozenset(cpus[start:end]))
        start = end
    return groups


def pin_thread(cpus: frozenset[int]) -> None:
    """Run the calling thread (and the threads it starts from now on) on ``cpus`` only."""
    os.sched_setaffinity(0, cpus)


@contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """The calling thread on ``cpus`` inside the block (threads started there keep them), restored
    after; nothing when ``cpus`` is None."""
    if cpus is None:
        yield
        return
    before = frozenset(os.sched_getaffinity(0))
    pin_thread(cpus)
    try:
        yield
    finally:
        pin_thread(before)


def format_cpus(cpus: frozenset[int]) -> str:
    """CPUs as ``--engine-cpus`` takes them (``2,3``)."""
    return ",".join(map(str, sorted(cpus)))
