"""Load held over time against a running server: requests, errors by code, latency and the
server's resident memory, window by window (issue 13, point 7).

``run_soak`` drives ``clients`` concurrent callers (grpc.aio, in this process) for ``seconds``
and samples the server process's RSS once a second; ``benchmarks/soak.py`` runs it for minutes
and writes the figures, ``tests/reliability/test_load.py`` for 30 s. Overload answers
(RESOURCE_EXHAUSTED) are counted as such, apart from errors: they are the documented answer
when the server is full.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DOCUMENTED_REFUSALS", "edge_with_cloud", "format_soak_markdown", "plot_soak", "rss_mb", "run_soak"]

DOCUMENTED_REFUSALS = frozenset({"RESOURCE_EXHAUSTED"})


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


@contextlib.contextmanager
def edge_with_cloud(bundle: Path, edge_args: Sequence[str] = ()) -> Iterator[Any]:
    """Two real ``edgekit serve`` processes on ``bundle``: one plays the cloud, the other is the
    edge server under test, falling back to it (``--cloud``). Yields the edge's process handle
    (``.address``, ``.proc.pid``). The cloud answers with the same model: what is measured here
    is the server holding up, not accuracy."""
    from edgekit.bench.servers import ServerProcess

    serve = [sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0", "--threads", "1"]
    with ServerProcess(serve, name="cloud") as cloud, \
            ServerProcess([*serve, "--cloud", cloud.address, *edge_args], name="edge") as edge:
        yield edge


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(address: str, payloads: Sequence[bytes], clients: int, seconds: float, pid: int | None,
                 timeout_s: float) -> tuple[list[tuple[float, float, str]], list[tuple[float, float]]]:
    import grpc

    calls: list[tuple[float, float, str]] = []  # (since start s, latency ms, code)
    memory: list[tuple[float, float]] = []  # (since start s, RSS MB)
    start = time.perf_counter()
    end = start + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/edgekit.v1.EdgeClassifier/Classify")

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    await call(payloads[i % len(payloads)], timeout=timeout_s)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                calls.append((t0 - start, (time.perf_counter() - t0) * 1000.0, code))
                i += clients

        async def sample() -> None:
            while time.perf_counter() < end:
                if pid is not None:
                    memory.append((time.perf_counter() - start, rss_mb(pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(sample(), *(client(k) for k in range(clients)))
    return calls, memory


def run_soak(address: str, texts: Sequence[str], *, clients: int = 64, seconds: float = 30.0,
             pid: int | None = None, window_s: float = 10.0, texts_per_call: int = 1,
             timeout_s: float = 10.0) -> dict[str, Any]:
    """Hold ``clients`` callers on ``address`` for ``seconds``; figures per ``window_s`` and overall."""
    from edgekit.runtime.grpc import edgekit_pb2 as ek

    payloads = [ek.ClassifyRequest(texts=[texts[(i + j) % len(texts)] for j in range(texts_per_call)])
                .SerializeToString() for i in range(min(len(texts), 1000))]
    calls, memory = asyncio.run(_drive(address, payloads, clients, seconds, pid, timeout_s))
    windows = []
    for w in range(max(1, int(round(seconds / window_s)))):
        lo, hi = w * window_s, (w + 1) * window_s
        inside = [c for c in calls if lo <= c[0] < hi]
        codes = collections.Counter(code for _, _, code in inside)
        ok = [ms for _, ms, code in inside if code == "OK"]
        rss = [mb for t, mb in memory if lo <= t < hi]
        windows.append({
            "from_s": lo, "to_s": hi, "requests": len(inside), "requests_per_s": len(inside) / window_s,
            "codes": dict(codes), "p50_ms": _pct(ok, 0.50), "p99_ms": _pct(ok, 0.99),
            "rss_mb": max(rss) if rss else None,
        })
    codes = collections.Counter(code for _, _, code in calls)
    ok = [ms for _, ms, code in calls if code == "OK"]
    first, last = windows[0]["rss_mb"], windows[-1]["rss_mb"]
    return {
        "address": address, "clients": clients, "seconds": seconds, "texts_per_call": texts_per_call,
        "requests": len(calls), "codes": dict(codes),
        "errors": {c: n for c, n in codes.items() if c != "OK" and c not in DOCUMENTED_REFUSALS},
        "p50_ms": _pct(ok, 0.50), "p99_ms": _pct(ok, 0.99),
        "rss_growth": (last / first - 1.0) if first and last else None,
        "windows": windows, "memory": memory,
    }


def format_soak_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['clients']} clients for {result['seconds']:.0f} s, {result['texts_per_call']} text(s) per call: "
        f"{result['requests']} requests, codes {result['codes']}, errors {result['errors'] or 'none'}; "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms; resident memory "
        + (f"{result['rss_growth'] * 100:+.1f}% from the first window to the last" if result["rss_growth"] is not None
           else "not sampled"),
        "",
        "| window s | requests/s | p50 ms | p99 ms | RSS MB | codes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for w in result["windows"]:
        rss = "–" if w["rss_mb"] is None else f"{w['rss_mb']:.1f}"
        lines.append(f"| {w['from_s']:.0f}–{w['to_s']:.0f} | {w['requests_per_s']:.0f} | {w['p50_ms']:.2f} | "
                     f"{w['p99_ms']:.2f} | {rss} | {w['codes']} |")
    return "\n".join(lines) + "\n"


def plot_soak(result: dict[str, Any], path: Path) -> Path | None:
    """Requests/s, p50/p99 and RSS over time in one figure (None without matplotlib)."""
    from edgekit.plots import pyplot

    try:
        plt = pyplot()
    except ImportError:
        return None
    windows = result["windows"]
    mid = [(w["from_s"] + w["to_s"]) / 2 for w in windows]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].plot(mid, [w["requests_per_s"] for w in windows], marker="o")
    axes[0].set_ylabel("requests/s")
    axes[1].plot(mid, [w["p50_ms"] for w in windows], marker="o", label="p50")
    axes[1].plot(mid, [w["p99_ms"] for w in windows], marker="o", label="p99")
    axes[1].set_ylabel("latency ms")
    axes[1].legend()
    axes[2].plot([t for t, _ in result["memory"]], [mb for _, mb in result["memory"]])
    axes[2].set_ylabel("server RSS MB")
    axes[2].set_xlabel("seconds")
    fig.suptitle(f"edgekit serve under {result['clients']} clients")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
