"""``edgekit serve --workers N``: N server processes sharing one port, for edge servers with more cores.

One Python process serves gRPC with one interpreter lock; past a few cores more threads do not
add throughput, more processes do. Each worker is a full ``edgekit serve`` (its own engine with
``threads`` intra-op threads, N × threads ≤ cores) that binds the same port with SO_REUSEPORT
(switched on for workers only, see :data:`REUSE_PORT_ENV`), so the kernel spreads new
connections over the workers.

Metrics: the workers run prometheus_client in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a
private temporary directory) and expose no HTTP port of their own; this parent process serves
``/metrics`` with a ``MultiProcessCollector`` that sums counters and histograms over the workers
(the breaker gauge reports the highest live value). The parent forwards SIGTERM/SIGINT to every
worker (each drains its in-flight requests within ``--grace-s``) and exits 0 once all have; if a
worker dies on its own, the parent stops the others and exits 1 so that a supervisor restarts it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

from edgekit.runtime.security import Security, hostport

from edgekit.errors import ConfigError

__all__ = ["REUSE_PORT_ENV", "free_port", "serve_workers", "threads_per_worker"]

# Set by the parent in its workers' environment: their servers bind the shared port with
# SO_REUSEPORT (a server started by hand never does, so a busy port fails loudly).
REUSE_PORT_ENV = "EDGEKIT_WORKER_REUSE_PORT"

log = logging.getLogger(__name__)


def threads_per_worker(workers: int, threads: int | None, cores: int | None = None) -> int:
    """Engine threads per worker: given (and checked: N × threads ≤ cores), or cores // N."""
    cores = cores or os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if threads is None:
        return max(1, cores // workers)
    if workers * threads > cores:
        raise ConfigError(f"--workers {workers} x --threads {threads} = {workers * threads} engine threads on "
                          f"{cores} cores: they would fight for the CPU (use --threads {max(1, cores // workers)})")
    return threads


def free_port(host: str) -> int:
    """A port the OS says is free now (the workers bind it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _start(argv: Sequence[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start one worker; return it and its "serving ..." line (or raise with its last output)."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("serving "):
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return proc, line.strip()
    proc.wait()
    raise ConfigError(f"worker exited ({proc.returncode}) before serving: {''.join(lines[-5:]).strip()}")


def _drain(proc: subprocess.Popen) -> None:
    """Pass a worker's later output through (its log lines), so its pipe never fills up."""
    for line in proc.stdout:  # type: ignore[union-attr]
        sys.stderr.write(line)


def serve_workers(worker_argv: Callable[[int, int], list[str]], workers: int, *, host: str, port: int,
                  metrics_port: int | None, grace_s: float, echo: Callable[[str], None] = print,
                  security: Security | None = None, env: dict[str, str] | None = None) -> int:
    """Run ``workers`` processes of ``worker_argv(port, i)`` (i: the worker's index) on one port until a
    signal; returns the exit code. ``security``: the workers' TLS, which the summed ``/metrics`` serves
    with too; ``env``: more environment for the workers."""
    security = security or Security()
    port = port or free_port(host)
    mp_dir = tempfile.mkdtemp(prefix="edgekit-metrics-")
    env = {**os.environ, **(env or {}), "PROMETHEUS_MULTIPROC_DIR": mp_dir, REUSE_PORT_ENV: "1"}
    procs: list[subprocess.Popen] = []
    stopping = threading.Event()
    try:
        for index in range(workers):
            proc, line = _start(worker_argv(port, index), env)
            procs.append(proc)
            log.info("event=worker_serving pid=%d %s", proc.pid, line)
        httpd = _serve_metrics(host, metrics_port, mp_dir, security) if metrics_port is not None else None
        echo(f"{line.split(' on ')[0]} on {host}:{port} ({workers} workers, pids "
             f"{', '.join(str(p.pid) for p in procs)})")
        if httpd is not None:
            echo(f"metrics on {security.metrics_scheme}://{hostport(host, httpd.server_port)}/metrics "
                 "(summed over the workers)")

        def on_signal(signum, frame) -> None:
            stopping.set()

        def on_hangup(signum, frame) -> None:  # reload: every worker re-reads the bundle itself
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)
        while not stopping.is_set():
            if any(p.poll() is not None for p in procs):
                log.error("event=worker_died pids=%s", [p.pid for p in procs if p.poll() is not None])
                return_code = 1
                break
            stopping.wait(0.2)
        else:
            return_code = 0
        _stop(procs, grace_s, mp_dir)
        if httpd is not None:
            httpd.shutdown()
        return return_code
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(mp_dir, ignore_errors=True)


def _stop(procs: list[subprocess.Popen], grace_s: float, mp_dir: str) -> None:
    from prometheus_client import multiprocess

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 10
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        multiprocess.mark_process_dead(proc.pid, mp_dir)


def _serve_metrics(host: str, port: int, mp_dir: str, security: Security):
    from prometheus_client import CollectorRegistry, multiprocess

    from edgekit.runtime.metrics_http import serve_metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=mp_dir)
    return serve_metrics(host, port, registry, security.metrics_tls())
