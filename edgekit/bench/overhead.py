"""What the server costs beyond its model: latency at one client and throughput under load.

:func:`run_overhead` measures, in one run, on one bundle, with every server a real
``edgekit serve`` *process* and every client in this (other) process:

1. **One client, one text per call, interleaved** (each round sends the same text through every
   subject in turn, in a new random order each round, seeded): the model called in process (``in-process``: tokenizer +
   engine), a bare gRPC echo (``grpc-echo``: a generic unary handler in its own process that
   returns the request's bytes, the transport's floor), a bare model server (``bare-model``: a
   generic handler that runs the same model and answers the top label, nothing of edgekit's
   server: what Python gRPC itself adds around a model), the same answering what edgekit answers
   with one handler (``fused-minimum``: the least edgekit's answer costs in Python, the floor for
   any rewrite of its request path), the same with edgekit's data plane as its
   handler (``bare-dataplane``: what edgekit's request path adds, without the server around it),
   and each server mode (``Classify`` with ``allow_cloud=False``). ``overhead_ms`` = server p50 −
   in-process p50 − echo p50: what the server adds beyond model and transport. With ``blocks`` > 1
   the interleaved measurement is repeated that many times on the same servers and each block's
   overheads are listed (``single_client_blocks``): on a shared machine one block's figure moves by
   a tenth of a millisecond from one minute to the next, and one number hides that. Each block also reports the
   host's steal (``single_client_steal_pct``, from /proc/stat): the share of the CPU time the
   machine's threads wanted that a hypervisor gave to other guests, the sign of a machine that is
   not idle however quiet it looks from inside.
2. **Throughput** at each client count (1, 4, 16, 64 by default) for each server mode: that many
   concurrent callers (``grpc.aio`` coroutines in this process, one channel each) sending one
   text per call for ``seconds``, in slices of about 2 s; between two slices, the model's own
   throughput in process at the mean batch size the server formed so far (read from the server's
   metrics; 3 s in all per cell, so that the reference and the server see the same machine); the
   share of the cell's time the server's model was busy (``edgekit_model_busy_seconds_total``;
   ``None`` for a server without it); and the CPU seconds the client process and the server
   process (with its children, under ``--workers``) used: the clients share the machine's cores
   with the server, and an engine that is busy all the time but slower than in process was short
   of a core, not of work.

Server modes: ``default`` (the options ``edgekit serve`` starts with), ``no-batching``
(``--max-batch-size 1``), ``wait-2ms`` (``--max-wait-ms 2``, the old micro-batching),
``no-fast-lane`` (``--no-fast-lane``: grpcio's own server path for every method, as before session 14),
``workers-N`` when asked (``--workers N``), ``engine-cpus-LIST`` when asked (``--engine-cpus
LIST``: the engine thread on those CPUs, the server's other threads on the rest), and
``default@NAME`` for each ``compare`` entry: the default server as another Python installs edgekit
(a venv of an older commit), so that two versions are measured side by side in one run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.servers import ServerProcess
from edgekit.errors import ConfigError

__all__ = ["BARE_DATAPLANE_SCRIPT", "BARE_MODEL_SCRIPT", "ECHO_SCRIPT", "FUSED_MINIMUM_SCRIPT", "REFERENCE_SERVERS",
           "SERVER_MODES", "format_overhead_markdown", "run_overhead", "server_script"]

log = logging.getLogger(__name__)

SERVER_MODES = {
    "default": [],
    "no-batching": ["--max-batch-size", "1"],
    "wait-2ms": ["--max-wait-ms", "2"],
    "no-fast-lane": ["--no-fast-lane"],
}

_SERVER_TAIL = """
handler = grpc.method_handlers_generic_handler("edgekit.v1.EdgeClassifier", {{
    "Classify": grpc.unary_unary_rpc_method_handler({handler}, request_deserializer={parse},
                                                    response_serializer={serialize})}})
server = grpc.server({pool})
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
{after_start}
print(f"serving {title} on 127.0.0.1:{{port}}", flush=True)
server.wait_for_termination()
"""


def server_script(setup: str, handler: str, title: str, *, pool: str = "LifoPool(max_workers=16)",
                  raw: bool = False, after_start: str = "") -> str:
    """A bare gRPC server for ``python -c``: ``setup`` (imports, the model, ``handler``'s definition),
    then ``handler`` (an expression) as edgekit.v1.EdgeClassifier/Classify on ``pool``, listening on a
    free port of 127.0.0.1 and printing the ready line :class:`ServerProcess` waits for (``serving
    TITLE on HOST:PORT``); ``raw``: bytes in and out, no protobuf."""
    return setup.strip("\n") + _SERVER_TAIL.format(
        handler=handler, pool=pool, title=title, after_start=after_start,
        parse="None" if raw else "ek.ClassifyRequest.FromString",
        serialize="None" if raw else "ek.ClassifyResponse.SerializeToString")


# The transport's floor: a generic unary handler that answers with the request's own bytes, in a
# process of its own (hand-written because no library ships a bare echo service).
ECHO_SCRIPT = server_script("""
import sys, grpc
from concurrent import futures
def echo(request, context):
    return request
""", "echo", "echo (bare gRPC)", pool="futures.ThreadPoolExecutor(max_workers=16)", raw=True)


# What any Python gRPC server running this model costs, with nothing of edgekit's server: one
# generic handler (its own process, one worker thread) that parses the request, calls the same
# bundle model as the in-process row and answers the top label. The gap between it and
# ``edgekit serve`` is edgekit's request path; the gap between it and model + echo is Python gRPC's.
BARE_MODEL_SCRIPT = server_script("""
import sys, grpc
from concurrent import futures
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.model import load_bundle_model
model = load_bundle_model(sys.argv[1], threads=int(sys.argv[2]))
labels = model.info.labels
def classify(request, context):
    row = model.logits(list(request.texts))[0]
    j = int(row.argmax())
    return ek.ClassifyResponse(predictions=[ek.Prediction(label=labels[j], score=float(row[j]))])
""", "classify", "bare-model (grpc + model only)", pool="futures.ThreadPoolExecutor(max_workers=1)",
    after_start='model.logits(["warm up"])')


# The least edgekit's answer to a confident text needs, in the same bare server: one handler doing
# what the layers do for it (validation and admission of the data plane, the model, the calibrated
# top label, the full Prediction), no layers (edgekit.bench.request_path.fused_minimum_handler).
# bare-model -> fused-minimum is what edgekit's answer costs in Python however it were written;
# fused-minimum -> bare-dataplane is what the layers cost beyond it: the most any restructuring of
# the request path in Python could save.
FUSED_MINIMUM_SCRIPT = server_script("""
import sys, grpc
from edgekit.bench.request_path import fused_minimum_handler
from edgekit.runtime.dataplane import DataPlane
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc.pool import LifoPool
from edgekit.runtime.model import load_bundle_model
model = load_bundle_model(sys.argv[1], threads=int(sys.argv[2]))
dataplane = DataPlane(model)  # its validation and admission only
dataplane.warm_up()
""", "fused_minimum_handler(model, dataplane)", "fused-minimum (grpc + one handler)")


# The same bare server with edgekit's request path in it: the handler is edgekit's Classify servicer
# over a DataPlane (validation, admission, batcher, cascade, calibration, metrics, drift window), on
# edgekit's worker pool (so the bookkeeping runs after the response, as in ``edgekit serve``), but
# without the rest of ``edgekit serve``: no interceptors, health, reflection, admin or metrics HTTP.
# bare-model -> bare-dataplane is what the data plane's Python costs; bare-dataplane -> default is
# the server around it.
BARE_DATAPLANE_SCRIPT = server_script("""
import sys, grpc
from edgekit.runtime.dataplane import DataPlane
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc.pool import LifoPool
from edgekit.runtime.grpc.servicers import EdgeClassifierServicer
from edgekit.runtime.model import load_bundle_model
dataplane = DataPlane(load_bundle_model(sys.argv[1], threads=int(sys.argv[2])))
dataplane.warm_up()
""", "EdgeClassifierServicer(dataplane).Classify", "bare-dataplane (grpc + edgekit's data plane)")


def _request_bytes(text: str) -> bytes:
    from edgekit.runtime.grpc import edgekit_pb2 as ek

    return ek.ClassifyRequest(texts=[text], allow_cloud=False).SerializeToString()


def _callers(address: str):
    """A blocking one-text caller of the server at ``address`` (raw bytes in and out: no parsing cost)."""
    import grpc

    channel = grpc.insecure_channel(address)
    call = channel.unary_unary("/edgekit.v1.EdgeClassifier/Classify")
    return channel, lambda payload: call(payload, timeout=30)


def round_orders(names: Iterable[str], rounds: int, seed: int = 12) -> Iterator[list[str]]:
    """Each round's order of ``names`` for :func:`_single_client`: a random permutation per round,
    the same ones for the same seed."""
    rng, order = random.Random(seed), list(names)
    for _ in range(rounds):
        rng.shuffle(order)
        yield list(order)


def _single_client(model, servers: dict[str, ServerProcess], texts: Sequence[str],
                   rounds: int) -> dict[str, list[float]]:
    """Interleaved one-client latency (ms) of the in-process model and every server, in a new random
    order each round (seeded: the same orders in every run). Not a rotation: there every subject always
    followed the same other one, and the one after the slowest (``wait-2ms``: 5 ms with the client
    idle) paid about 0.09 ms for it (session 13, issue 12: the default server measured beside an
    identical copy of itself placed there)."""
    channels, calls = {}, {}
    for name, server in servers.items():
        channels[name], calls[name] = _callers(server.address)
    subjects: dict[str, Callable[[str, bytes], Any]] = {"in-process": lambda text, payload: model.logits([text])}
    subjects.update({name: (lambda text, payload, c=c: c(payload)) for name, c in calls.items()})
    times: dict[str, list[float]] = {name: [] for name in subjects}
    try:
        for r, names in enumerate(round_orders(subjects, rounds + 20)):  # 20 warm-up rounds, not recorded
            text = texts[r % len(texts)]
            payload = _request_bytes(text)
            for name in names:
                t0 = time.perf_counter()
                subjects[name](text, payload)
                if r >= 20:
                    times[name].append((time.perf_counter() - t0) * 1000.0)
    finally:
        for channel in channels.values():
            channel.close()
    return times


async def _aio_load(address: str, payloads: Sequence[bytes], clients: int, seconds: float,
                    first: int = 0) -> tuple[list[float], int, float]:
    """``clients`` concurrent callers for ``seconds``: each call's latency (ms), the errors, the time
    taken. Caller ``i`` starts at payload ``first + i``."""
    import grpc

    channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    try:
        calls = [ch.unary_unary("/edgekit.v1.EdgeClassifier/Classify") for ch in channels]
        await asyncio.gather(*(call(payloads[0], timeout=30) for call in calls))  # connect and warm
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def client(i: int) -> None:
            nonlocal errors
            k = first + i
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await calls[i](payloads[k % len(payloads)], timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000.0)
                k += clients

        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return latencies, errors, elapsed


# A throughput cell alternates slices this long under load with slices of the in-process reference:
# this machine's speed drifts by a third within minutes (RESULTS.md, issue 12, session 11), and a
# reference measured once after the cell moved the ratio by +-0.15 on its own.
_SLICE_S = 2.0


def _load_cell(model, server: ServerProcess, payloads: Sequence[bytes], texts: Sequence[str], clients: int,
               seconds: float) -> dict[str, Any]:
    """One throughput cell: slices of load on ``server`` alternating with slices of the in-process
    model at the mean batch the server formed so far (when its metrics tell it), summed."""
    slices = max(1, round(seconds / _SLICE_S))
    reference_s = min(seconds, 3.0) / slices
    latencies: list[float] = []
    errors, load_s, cpu_s, server_cpu_s, busy_s = 0, 0.0, 0.0, 0.0, 0.0
    has_cpu = has_busy = True
    ref_texts, ref_s = 0, 0.0
    pid = server.proc.pid if server.proc is not None else -1
    calls0 = server.metric("edgekit_batch_size_count") if server.metrics_url else 0.0
    sum0 = server.metric("edgekit_batch_size_sum") if server.metrics_url else 0.0
    mean_batch = None
    for index in range(slices):
        busy0 = _busy_seconds(server)
        cpu0, server_cpu0 = _cpu_seconds(), _process_tree_cpu_s(pid)
        slice_latencies, slice_errors, elapsed = asyncio.run(
            _aio_load(server.address, payloads, clients, seconds / slices, first=index * clients))
        server_cpu1, busy1 = _process_tree_cpu_s(pid), _busy_seconds(server)
        cpu_s += _cpu_seconds() - cpu0
        latencies += slice_latencies
        errors += slice_errors
        load_s += elapsed
        if server_cpu0 is None or server_cpu1 is None:
            has_cpu = False
        else:
            server_cpu_s += server_cpu1 - server_cpu0
        if busy0 is None or busy1 is None:
            has_busy = False
        else:
            busy_s += busy1 - busy0
        if server.metrics_url:
            calls = server.metric("edgekit_batch_size_count") - calls0
            mean_batch = round((server.metric("edgekit_batch_size_sum") - sum0) / calls, 2) if calls else None
            if mean_batch:
                done, took = _in_process_run(model, texts, mean_batch, reference_s)
                ref_texts += done
                ref_s += took
    arr = np.asarray(latencies)
    row: dict[str, Any] = {
        "requests": int(arr.size), "errors": errors, "throughput_rps": round(arr.size / load_s, 1),
        "latency_ms_p50": round(float(np.percentile(arr, 50)), 3) if arr.size else None,
        "latency_ms_p99": round(float(np.percentile(arr, 99)), 3) if arr.size else None,
        "slices": slices, "client_cpu_s": round(cpu_s, 2),
        "server_cpu_s": round(server_cpu_s, 2) if has_cpu else None,
        "model_busy": round(busy_s / load_s, 3) if has_busy else None,
    }
    if server.metrics_url:
        row["mean_batch"] = mean_batch
        if ref_s:
            row["in_process_rps_at_batch"] = round(ref_texts / ref_s, 1)
    return row


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of ``pid`` and its live descendants, from /proc (Linux; None
    elsewhere). Hand-written: psutil would do it, but it is not among the bench's dependencies."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu s)
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # after the command: state, ppid, ... utime (field 14) and stime (15), counted from 1
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    if pid not in stats:
        return None
    tree, total, grew = {pid}, 0.0, True
    while grew:
        grew = False
        for child, (parent, _) in stats.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    for member in tree:
        total += stats[member][1]
    return total


def _host_cpu_ticks() -> list[int] | None:
    """This machine's CPU time by state since boot, summed over its CPUs: /proc/stat's ``cpu`` line
    (user nice system idle iowait irq softirq steal, in clock ticks); None off Linux. Hand-written for
    the same reason as :func:`_process_tree_cpu_s`."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    return [int(x) for x in fields[1:9]]


def steal_pct(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of the CPU time this machine's threads wanted between two :func:`_host_cpu_ticks`
    readings that the hypervisor gave to other guests instead (steal / (busy + steal), %): 0 on an
    idle host or bare metal. None without readings or without busy time."""
    if before is None or after is None:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (b - a for a, b in zip(before, after))
    wanted = user + nice + system + irq + softirq + steal
    return round(100.0 * steal / wanted, 1) if wanted > 0 else None


def _busy_seconds(server: ServerProcess) -> float | None:
    """The server's ``edgekit_model_busy_seconds_total`` (None: no metrics, or a server from before
    the counter, as an older ``--compare`` install may be)."""
    return server.metric("edgekit_model_busy_seconds_total", missing=None) if server.metrics_url else None


def _in_process_run(model, texts: Sequence[str], batch: float, seconds: float) -> tuple[int, float]:
    """The model in this process at ``batch`` texts per call (rounded) for ``seconds``: texts done, time taken."""
    size = max(1, int(round(batch)))
    done, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [texts[(k + j) % len(texts)] for j in range(size)]
        model.logits(chunk)
        done += size
        k += size
    return done, time.perf_counter() - start


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


# The bare servers measured beside edgekit's (each defined above): what Python gRPC costs around the
# model, the least edgekit's answer costs, and edgekit's data plane without the server around it.
REFERENCE_SERVERS = {"bare-model": BARE_MODEL_SCRIPT, "fused-minimum": FUSED_MINIMUM_SCRIPT,
                     "bare-dataplane": BARE_DATAPLANE_SCRIPT}


def run_overhead(bundle: Path, texts: Sequence[str], *, clients: Sequence[int] = (1, 4, 16, 64),
                 seconds: float = 5.0, rounds: int = 300, threads: int = 1, workers: int = 0,
                 engine_cpus: str | None = None, compare: dict[str, str] | None = None,
                 blocks: int = 1, modes: Sequence[str] | None = None,
                 references: Sequence[str] | None = None) -> dict[str, Any]:
    """See the module docstring. ``modes``: which of :data:`SERVER_MODES` to measure (None: all);
    ``workers`` > 1 adds a ``workers-N`` server mode, ``engine_cpus`` an ``engine-cpus-LIST`` mode
    (``serve --engine-cpus LIST``); ``compare`` maps a name to a Python executable whose edgekit serves
    a ``default@name`` mode. ``references``: which of :data:`REFERENCE_SERVERS` to measure (None:
    all); with ``references=[]`` and ``modes=["default"]`` the one-client rounds are issue 12's three
    subjects alone (in-process, echo, the default server): each server's caches go no colder than two
    other subjects between its calls make them."""
    from edgekit.device import device_record
    from edgekit.runtime.model import load_bundle_model

    if not texts:
        raise ConfigError("give at least one text")
    for kind, asked, known in (("server mode", modes, SERVER_MODES),
                               ("reference server", references, REFERENCE_SERVERS)):
        unknown = sorted(set(asked or ()) - set(known))
        if unknown:
            raise ConfigError(f"unknown {kind}(s) {unknown}; choose from {list(known)}")
    serve = ["-m", "edgekit", "serve", str(bundle), "--port", "0", "--threads", str(threads), "--metrics-port", "0"]
    modes = {name: [sys.executable, *serve, *extra] for name, extra in SERVER_MODES.items()
             if modes is None or name in modes}
    if workers > 1:
        modes[f"workers-{workers}"] = [sys.executable, *serve, "--workers", str(workers)]
    if engine_cpus:
        modes[f"engine-cpus-{engine_cpus}"] = [sys.executable, *serve, "--engine-cpus", engine_cpus]
    for name, python in (compare or {}).items():
        modes[f"default@{name}"] = [python, *serve]
    servers: dict[str, ServerProcess] = {}
    model = load_bundle_model(bundle, threads=threads)
    try:
        servers["grpc-echo"] = ServerProcess([sys.executable, "-c", ECHO_SCRIPT], name="grpc-echo").start()
        scripts = {name: script for name, script in REFERENCE_SERVERS.items()
                   if references is None or name in references}
        for name, script in scripts.items():
            servers[name] = ServerProcess([sys.executable, "-c", script, str(bundle), str(threads)], name=name).start()
        for name, argv in modes.items():
            servers[name] = ServerProcess(argv, name=name).start()
        per_block, steal = [], []
        for _ in range(max(1, blocks)):
            ticks = _host_cpu_ticks()
            times = _single_client(model, servers, texts, rounds)
            steal.append(steal_pct(ticks, _host_cpu_ticks()))
            block = {name: {"p50_ms": _pct(t, 50), "p99_ms": _pct(t, 99)} for name, t in times.items()}
            floor = block["in-process"]["p50_ms"] + block["grpc-echo"]["p50_ms"]
            for name in (*scripts, *modes):
                block[name]["overhead_ms"] = round(block[name]["p50_ms"] - floor, 3)
            per_block.append(block)
        single = per_block[0]
        payloads = [_request_bytes(t) for t in texts]
        load = []
        for n in clients:
            for name in modes:
                row = _load_cell(model, servers[name], payloads, texts, n, seconds)
                row.update(mode=name, clients=n)
                load.append(row)
    finally:
        for server in servers.values():
            server.stop()
        model.close()
    return {"device": device_record(), "bundle": str(bundle), "threads": threads, "seconds": seconds,
            "rounds": rounds, "single_client": single, "load": load,
            "single_client_blocks": [{name: row["overhead_ms"] for name, row in block.items() if "overhead_ms" in row}
                                     for block in per_block],
            "single_client_steal_pct": steal}


def format_overhead_markdown(result: dict[str, Any]) -> str:
    single = result["single_client"]
    lines = [f"Bundle `{result['bundle']}`, engine threads {result['threads']}, {result['rounds']} interleaved "
             "rounds at one client (one text per call):", "",
             "| subject | p50 ms | p99 ms | overhead ms (p50 − in-process − echo) |", "|---|---:|---:|---:|"]
    for name, row in single.items():
        lines.append(f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                     f"{row['overhead_ms']:.3f} |" if "overhead_ms" in row else
                     f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | – |")
    blocks = result.get("single_client_blocks") or []
    steal = result.get("single_client_steal_pct") or [None] * len(blocks)  # absent from older results
    if steal and steal[0] is not None:  # is the machine idle? The acceptance figures assume it
        lines += ["", f"Host steal while these rounds ran: {steal[0]:.1f}% of the CPU time this machine's threads "
                  "wanted went to other guests (0 on an idle host)."]
    if len(blocks) > 1:
        names = list(blocks[0])
        lines += ["", f"Overhead ms in each of {len(blocks)} blocks of {result['rounds']} interleaved rounds "
                  "(the table above is the first; host steal as above):", "",
                  "| block | " + " | ".join(names) + " | host steal % |", "|---|" + "---:|" * (len(names) + 1)]
        for i, (block, stolen) in enumerate(zip(blocks, steal), 1):
            lines.append(f"| {i} | " + " | ".join(f"{block[name]:.3f}" for name in names)
                         + f" | {_or_dash(stolen, '.1f')} |")
        known = [s for s in steal if s is not None]
        lines.append("| median | " + " | ".join(f"{float(np.median([b[name] for b in blocks])):.3f}" for name in names)
                     + f" | {_or_dash(float(np.median(known)) if known else None, '.1f')} |")
    lines += ["", f"Throughput, {result['seconds']:g} s per cell, clients in another process (grpc.aio):", "",
              "| mode | clients | requests/s | p50 ms | p99 ms | errors | mean batch | "
              "in-process texts/s at that batch | server / in-process | model busy | server CPU s | client CPU s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["load"]:
        ratio = (f"{r['throughput_rps'] / r['in_process_rps_at_batch']:.2f}"
                 if r.get("in_process_rps_at_batch") else "–")
        lines.append(f"| {r['mode']} | {r['clients']} | {r['throughput_rps']:.1f} | {r['latency_ms_p50']} | "
                     f"{r['latency_ms_p99']} | {r['errors']} | {r.get('mean_batch', '–')} | "
                     f"{r.get('in_process_rps_at_batch', '–')} | {ratio} | {_or_dash(r.get('model_busy'), '.0%')} | "
                     f"{_or_dash(r.get('server_cpu_s'), '.2f')} | {r['client_cpu_s']} |")
    return "\n".join(lines) + "\n"


def _or_dash(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)
